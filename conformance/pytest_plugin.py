"""pytest plugin: the rankspec oracle as a fixture.

Registered through the ``pytest11`` entry point ``rankspec``, so installing
rankspec makes it available in every project's test suite::

    def test_my_rank_sort(rankspec_oracle):
        rankspec_oracle.assert_conforms(my_rank_sort, loss="rs", delta=0.5)

    def test_my_head(rankspec_oracle):      # a detector head's loss function (raw outputs -> loss dict)
        rankspec_oracle.assert_head_conforms("dense2d", "rs", target=my_head_loss)

A failure is an ``AssertionError`` whose message holds the diagnosis (e.g.
"matches rs_loss(self_rank='one')") and the minimal counterexample as a
copy-pasteable reproducer.  Options: ``--rankspec-examples N`` (generated cases
per check, default 50) and ``--rankspec-seed S`` (default 0), or the ini keys
``rankspec_examples`` / ``rankspec_seed``.  Disable with ``-p no:rankspec``.

Other test runners use :func:`rankspec.conformance.assert_conforms` directly.
"""

from __future__ import annotations

import pytest

DEFAULT_EXAMPLES = 50


class Oracle:
    """The object behind the ``rankspec_oracle`` fixture."""

    def __init__(self, examples: int = DEFAULT_EXAMPLES, seed: int = 0):
        self.examples = examples
        self.seed = seed

    def assert_conforms(self, target, loss: str = "rs", delta=None, **kwargs):
        """:func:`rankspec.conformance.assert_conforms` with this session's examples and seed."""
        __tracebackhide__ = True
        from rankspec.conformance.harness import assert_conforms

        kwargs.setdefault("examples", self.examples)
        kwargs.setdefault("seed", self.seed)
        return assert_conforms(target, loss, delta, **kwargs)

    def check(self, target, loss: str = "rs", delta=None, **kwargs):
        """:func:`rankspec.conformance.check` (returns the report, never raises for nonconformance)."""
        from rankspec.conformance.harness import check

        kwargs.setdefault("examples", self.examples)
        kwargs.setdefault("seed", self.seed)
        return check(target, loss, delta=delta, **kwargs)

    def reference(self, loss: str, logits, targets, delta=None, *extras, **options):
        """The reference :class:`~rankspec.refimpl.LossResult` of ``loss`` (options change conventions).

        The spec's extra inputs (:attr:`LossSpec.extra_inputs`, e.g. ``ious`` and
        ``levels`` of ``rankdet``, ``image_ids`` of ``dr``, ``ious`` of ``ape``) follow
        ``delta`` positionally in spec order or are given by name::

            rankspec_oracle.reference("rankdet", logits, labels, ious=ious, levels=levels)

        An extra input left out takes the reference function's default (an error names
        it when it has none).  Every other keyword is a convention option.
        """
        import inspect

        from rankspec.conformance.specs import get_spec

        spec = get_spec(loss)
        names = [i.name for i in spec.extra_inputs]
        if len(extras) > len(names):
            raise TypeError(f"loss {spec.name!r} takes {len(names)} extra input(s) "
                            f"({', '.join(names) or 'none'}), got {len(extras)} positional")
        given = dict(zip(names, extras))
        for n in names:
            if n in options:
                if n in given:
                    raise TypeError(f"extra input {n!r} given both positionally and by name")
                given[n] = options.pop(n)
        opts = {**spec.expected_options(), **options}
        d = spec.default_delta if delta is None else delta
        if len(given) == len(names):
            return spec.reference(logits, targets, d, opts, tuple(given[n] for n in names))
        params = inspect.signature(spec.function).parameters
        for n in names:
            if n not in given and params[n].default is inspect.Parameter.empty:
                raise TypeError(f"loss {spec.name!r} needs the extra input {n!r} (extra inputs: {', '.join(names)})")
        if opts.get("scope", "batch") != "batch" and "scope" not in params:
            raise ValueError("scope='image' is defined only for (logits, targets) losses")
        if "scope" not in params:
            opts.pop("scope", None)
        args = [logits, targets]
        if spec.default_delta is not None:
            if spec.delta_keyword:
                opts["delta"] = d
            else:
                args.append(d)
        return spec.function(*args, **given, **opts)

    def check_head(self, head=None, loss=None, **kwargs):
        """:func:`rankspec.conformance.check_head` with this session's seed (returns the report)."""
        from rankspec.conformance.heads import check_head

        kwargs.setdefault("seed", self.seed)
        return check_head(head, loss, **kwargs)

    def assert_head_conforms(self, head, loss=None, **kwargs):
        """:func:`rankspec.conformance.assert_head_conforms` with this session's seed."""
        __tracebackhide__ = True
        from rankspec.conformance.heads import assert_head_conforms

        kwargs.setdefault("seed", self.seed)
        return assert_head_conforms(head, loss, **kwargs)

    @property
    def losses(self):
        from rankspec.conformance.specs import spec_names

        return spec_names()


def pytest_addoption(parser):
    group = parser.getgroup("rankspec", "rankspec conformance oracle")
    group.addoption("--rankspec-examples", type=int, default=None,
                    help=f"generated cases per rankspec_oracle check (default {DEFAULT_EXAMPLES})")
    group.addoption("--rankspec-seed", type=int, default=None, help="seed of rankspec_oracle's generated cases")
    parser.addini("rankspec_examples", f"generated cases per rankspec_oracle check (default {DEFAULT_EXAMPLES})")
    parser.addini("rankspec_seed", "seed of rankspec_oracle's generated cases (default 0)")


def _option(config, name, default):
    """``--rankspec-NAME`` or the ini key ``rankspec_NAME``, validated like the API's argument: examples an
    integer >= 1, seed in [0, 2**32); a bad value stops the session with a usage error naming the option."""
    from rankspec.conformance._usage import UsageProblem, check_count, check_seed

    value = config.getoption(f"--rankspec-{name}")
    where = f"--rankspec-{name}"
    if value is None:
        ini = config.getini(f"rankspec_{name}")
        where = f"ini option rankspec_{name}"
        if ini in (None, "", []):
            return default
        try:
            value = int(str(ini).strip())
        except ValueError:
            raise pytest.UsageError(f"{where} must be an integer, got {ini!r}") from None
    try:
        return check_count(value, where) if name == "examples" else check_seed(value, where)
    except UsageProblem as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture
def rankspec_oracle(request) -> Oracle:
    """The rankspec oracle: ``rankspec_oracle.assert_conforms(fn, loss="rs", delta=0.5)``."""
    config = request.config
    return Oracle(_option(config, "examples", DEFAULT_EXAMPLES), _option(config, "seed", 0))
