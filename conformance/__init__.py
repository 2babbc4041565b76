"""rankspec.conformance - check any implementation of a ranking loss against the reference.

* :func:`check` / :func:`assert_conforms` - the harness (:mod:`.harness`);
* :data:`SPECS` / :class:`LossSpec` / :class:`Input` / :func:`register_spec` - what is checked (:mod:`.specs`);
* :func:`check_head` / :func:`assert_head_conforms` / :func:`head_reference` - detector-head pipelines,
  raw head outputs -> loss and gradient, on random batches with no, many and crowded ground truth
  (:mod:`.heads`);
* the ``rankspec`` CLI (:mod:`.cli`): ``rankspec check``, ``rankspec check-head``,
  ``rankspec vectors export|verify``;
* a pytest plugin (:mod:`.pytest_plugin`) with the ``rankspec_oracle`` fixture.

Importing this package never imports torch (torch targets import it on use).
"""

from __future__ import annotations

import importlib
import importlib.util

_EXPORTS = {
    "check": "harness", "assert_conforms": "harness", "NonConformant": "harness", "CheckReport": "harness",
    "TargetResult": "harness", "Counterexample": "harness", "UsageProblem": "harness",
    "reference_result": "harness", "clear_reference_cache": "harness",
    "TargetError": "_targets", "TargetSignatureError": "_targets", "make_target": "_targets",
    "CALL_CONVENTIONS": "_targets",
    "LossSpec": "specs", "BundledTarget": "specs", "Input": "specs", "SPECS": "specs", "register_spec": "specs",
    "get_spec": "specs", "spec_names": "specs",
    "Case": "_cases", "case_strategy": "_cases", "Tolerance": "_compare",
    "export_vectors": "_golden", "load_vectors": "_golden", "verify_vectors": "_golden",
    "check_head": "heads", "assert_head_conforms": "heads", "head_reference": "heads", "head_case": "heads",
    "HeadCase": "heads", "HeadReference": "heads", "HEADS": "heads", "HEAD_LOSSES": "heads", "SCENARIOS": "heads",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None and not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # a public submodule, e.g. ``harness``
    if module is None:
        raise AttributeError(f"module 'rankspec.conformance' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
