"""Test-suite configuration: hypothesis profiles and the import path for ``strategies``.

Profiles (select with ``HYPOTHESIS_PROFILE=<name>``; ``ci`` is the default):

* ``ci``       - 40 examples per property, no deadline (2 shared CPU cores; timing is not under test).
* ``thorough`` - 400 examples per property, for a local soak before a release.
* ``quick``    - 10 examples, for iterating on a single test.
* ``fuzz-long`` - 3000 examples per property: the long sweep of ``tests/test_fuzz_api.py`` (every public
  function, bad and extreme inputs), e.g.
  ``python -m pytest tests/test_fuzz_api.py --hypothesis-profile=fuzz-long`` (tens of minutes).  CI runs
  that file's bounded budget (a fixed number of examples per property, the whole file < ~60 s).
"""

from __future__ import annotations

import os
import sys

from hypothesis import HealthCheck, settings

# tests/ has no __init__.py; make ``import strategies`` work from every test module
# (and from helpers' modules) whatever pytest's import mode is.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("ci", max_examples=40, **_COMMON)
settings.register_profile("thorough", max_examples=400, **_COMMON)
settings.register_profile("quick", max_examples=10, **_COMMON)
settings.register_profile("fuzz-long", max_examples=3000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
