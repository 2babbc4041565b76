"""The loss records (rankspec.refimpl.record) and the per-image combination (rankspec.refimpl.scope)."""

import ast
import pathlib

import numpy as np
import pytest

import rankspec.refimpl as R
from rankspec.refimpl.conventions import all_conventions, by_keyword
from rankspec.refimpl.record import LossRecord, get_record, records
from rankspec.refimpl.registry import FAMILIES, PAPERS, lookup
from rankspec.refimpl.scope import combine_per_image, per_image_weights

RECORDS = [r for r in records() if r.name in R.__all__]


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: r.name)
def test_every_record_is_complete_and_agrees_with_the_registry(rec):
    assert isinstance(rec, LossRecord) and get_record(rec.name) is rec
    assert rec.family in FAMILIES and rec.citations and all(p in PAPERS for p, _ in rec.citations)
    assert lookup(getattr(R, rec.name)).refs == tuple(rec.citations)  # one citation, two views
    assert callable(rec.validate) and callable(rec.reference)
    for backend in rec.kernels:
        assert callable(rec.kernel(backend))


def test_ranking_records_hold_their_conventions():
    assert by_keyword("self_rank", "ap_loss").default == {"ap_loss": "one", "rs_loss": "h0",
                                                          "bucketed_ap_loss": "h0", "bucketed_rs_loss": "h0"}
    assert by_keyword("interpolated").applies_to == ("ap_loss",)
    assert set(by_keyword("tied_negatives").applies_to) == {"bucketed_ap_loss", "bucketed_rs_loss", "make_buckets"}
    assert all(c.applies_to for c in all_conventions())


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_options_are_validated_before_the_zero_positive_return(backend, value):
    with pytest.raises(TypeError, match="interpolated"):
        R.ap_loss([1.0, 2.0, 3.0], np.zeros(3), interpolated=value, backend=backend)


def test_record_run_is_the_public_function():
    s, y = np.array([0.3, -1.0, 2.0, 0.1]), np.array([1.0, 0.0, 1.0, 0.0])
    a = R.rs_loss(s, y * 0.6, 0.5)
    b = get_record("rs_loss").run("numpy", s, y * 0.6, 0.5, self_rank="h0", tie_value=1.0, normalization="positives")
    assert a.loss == b.loss and np.array_equal(a.grad, b.grad)


def test_per_image_weights_by_hand():
    assert np.array_equal(per_image_weights([True, False, True, True]), [1 / 3, 0, 1 / 3, 1 / 3])
    assert np.array_equal(per_image_weights([False, False]), [0.0, 0.0])


def test_combine_per_image_is_the_mean_over_images_with_positives():
    s = np.array([[2.0, 1.0], [0.0, 5.0], [1.0, 3.0]])
    y = np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    r = combine_per_image(lambda a, b: R.ap_loss(a, b, 0.0), s, y)
    # image 0: positive below one negative: loss 1 - 1/2 = 1/2; image 2: same; image 1 has no positive
    assert r.loss == pytest.approx(0.5) and r.terms["num_images"] == 2.0
    g0, g2 = R.ap_loss(s[0], y[0], 0.0).grad, R.ap_loss(s[2], y[2], 0.0).grad
    assert np.allclose(r.grad, np.stack([g0 / 2, np.zeros(2), g2 / 2]))


def _imports(path: pathlib.Path, package: str):
    """Modules of rankspec.refimpl imported anywhere in ``path`` (function-level imports included)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                out.add(f"{mod}.{alias.name}")
            out.add(mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("rankspec.refimpl")}


def test_no_import_cycle_within_refimpl():
    root = pathlib.Path(R.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        name = ".".join(["rankspec.refimpl"] + parts)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        modules[name] = (path, package)
    graph = {}
    for name, (path, package) in modules.items():
        deps = {m for m in _imports(path, package) if m in modules and m != name}
        graph[name] = {d for d in deps if d != "rankspec.refimpl"}  # the package __init__ is the public facade
    # every family is split into losses/ + reference/: no fast path calls back into its public module
    state = {}

    def visit(node, stack):
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
