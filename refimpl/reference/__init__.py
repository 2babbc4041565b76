"""The plain math of every loss: float64 NumPy on already validated input, citing equations.

Nothing here validates public arguments (the records' validators do, see
:mod:`rankspec.refimpl.record`) and nothing here imports the fast paths
(:mod:`rankspec.refimpl.fast`), which are tested against these functions.
"""
