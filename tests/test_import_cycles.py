"""The project's import graph: no cycles, no torch in the reference, imports only along refimpl <- adapters <- conformance.

Every module of ``refimpl/``, ``adapters/`` and ``conformance/`` (installed as ``rankspec.refimpl``,
``rankspec.adapters``, ``rankspec.conformance``) is parsed with :mod:`ast`; *every* import statement counts,
including those inside functions, methods and ``if`` blocks (a function-level import hides a cycle from the
interpreter at import time, not from the design).  Relative imports are resolved against the importing
module's package; ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
Importing a submodule also runs its parents' ``__init__``; those implicit edges are not added (every package
that re-exports its submodules would otherwise be a cycle).
"""

from __future__ import annotations

import ast
import os
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("refimpl", "adapters", "conformance")  #: in dependency order: each may import only those before it
PREFIX = "rankspec"
COMPONENTS: List[List[str]] = []


def discover(root: str = ROOT, packages=PACKAGES, prefix: str = PREFIX) -> Dict[str, Tuple[str, bool]]:
    """module name -> (path, is_package) for every ``.py`` file under the package folders."""
    modules = {}
    for pkg in packages:
        base = os.path.join(root, pkg)
        for folder, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            rel = os.path.relpath(folder, root).split(os.sep)
            for f in sorted(files):
                if not f.endswith(".py"):
                    continue
                if f == "__init__.py":
                    modules[".".join([prefix] + rel)] = (os.path.join(folder, f), True)
                else:
                    modules[".".join([prefix] + rel + [f[:-3]])] = (os.path.join(folder, f), False)
    return modules


def imports_of(name: str, path: str, is_package: bool, known) -> List[Tuple[str, int]]:
    """(imported project module, line) for every import statement of the module, resolved."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    package = name if is_package else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in known else base, node.lineno))
    return out


def build_graph(root: str = ROOT, packages=PACKAGES, prefix: str = PREFIX):
    """(modules, edges): ``edges[a]`` = {b: line} for project modules ``a`` importing project module ``b``;
    also returns every raw import (including non-project ones) for the torch and direction checks."""
    modules = discover(root, packages, prefix)
    edges: Dict[str, Dict[str, int]] = {m: {} for m in modules}
    raw: Dict[str, List[Tuple[str, int]]] = {}
    for name, (path, is_pkg) in modules.items():
        raw[name] = imports_of(name, path, is_pkg, modules)
        for target, line in raw[name]:
            # ``import rankspec.refimpl.fast`` names a module; ``from rankspec.refimpl import x`` was resolved
            # to the module ``x`` or to the package
            while target and target not in modules and "." in target:
                target = target.rpartition(".")[0]  # e.g. an attribute of a module: ``import a.b.c`` of a class
            if target in modules and target != name:
                edges[name].setdefault(target, line)
    return modules, edges, raw


def find_cycles(edges: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """One cycle (as a closed path) per strongly connected component with more than one module (Tarjan);
    :data:`COMPONENTS` holds the components of the last call (every module on some cycle)."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = [0]

    def strongconnect(v):
        # iterative Tarjan: (node, iterator over successors)
        work = [(v, iter(sorted(edges[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    advanced = True
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    COMPONENTS[:] = comps
    cycles = []
    for comp in comps:
        members = set(comp)
        start = comp[0]
        # shortest path from start back to start inside the component (BFS)
        prev = {start: None}
        queue = [start]
        found = None
        while queue and found is None:
            nxt = []
            for u in queue:
                for w in sorted(edges[u]):
                    if w not in members:
                        continue
                    if w == start:
                        found = u
                        break
                    if w not in prev:
                        prev[w] = u
                        nxt.append(w)
                if found is not None:
                    break
            queue = nxt
        path = [start]
        u = found
        while u is not None and u != start:
            path.append(u)
            u = prev[u]
        path = [start] + list(reversed(path[1:])) + [start]
        cycles.append(path)
    return cycles


def _describe(cycle, edges) -> str:
    return " -> ".join(f"{a} (line {edges[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def _layer(module: str) -> int:
    parts = module.split(".")
    return PACKAGES.index(parts[1]) if len(parts) > 1 and parts[0] == PREFIX and parts[1] in PACKAGES else -1


# ------------------------------------------------------------------------------------------------
# the checker finds what it must (a planted package)
# ------------------------------------------------------------------------------------------------

def test_the_checker_finds_function_level_and_relative_cycles(tmp_path):
    pkg = tmp_path / "lib"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from . import b\n\ndef f():\n    return b\n")
    (pkg / "b.py").write_text("def g():\n    from .sub.c import h  # function-level\n    return h\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import numpy\n\ndef h():\n    from ..a import f\n    return f\n")
    (pkg / "d.py").write_text("from rankspec.lib import a\n")  # absolute, no cycle
    modules, edges, raw = build_graph(str(tmp_path), ("lib",), "rankspec")
    assert set(modules) == {"rankspec.lib", "rankspec.lib.a", "rankspec.lib.b", "rankspec.lib.sub",
                            "rankspec.lib.sub.c", "rankspec.lib.d"}
    assert set(edges["rankspec.lib.a"]) == {"rankspec.lib.b"}  # ``from . import b`` is the module b
    assert set(edges["rankspec.lib.sub.c"]) == {"rankspec.lib.a"}  # ``..a`` from inside sub/
    assert set(edges["rankspec.lib.d"]) == {"rankspec.lib.a"}
    cycles = find_cycles(edges)
    # lib -> a is not part of a cycle (the parent edge a -> lib is implicit and not added)
    assert cycles == [["rankspec.lib.a", "rankspec.lib.b", "rankspec.lib.sub.c", "rankspec.lib.a"]]
    assert ("numpy", 1) in raw["rankspec.lib.sub.c"]


# ------------------------------------------------------------------------------------------------
# the project
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph():
    return build_graph()


def test_every_package_is_found(graph):
    modules, _, _ = graph
    for pkg in PACKAGES:
        assert f"{PREFIX}.{pkg}" in modules
    assert "rankspec.conformance.harness" in modules and "rankspec.refimpl.losses.ap_rs" in modules


def test_no_import_cycles(graph):
    _, edges, _ = graph
    cycles = find_cycles(edges)
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(
        f"  {_describe(c, edges)}\n    (modules on cycles of this group: {', '.join(comp)})"
        for c, comp in zip(cycles, COMPONENTS))


def test_refimpl_never_imports_torch(graph):
    _, _, raw = graph
    bad = [f"{m} line {line}: imports {target}" for m, imps in sorted(raw.items()) if _layer(m) == 0
           for target, line in imps if target == "torch" or target.startswith("torch.")]
    assert not bad, "the reference must stay torch-free:\n" + "\n".join("  " + b for b in bad)


def test_imports_follow_refimpl_adapters_conformance(graph):
    _, edges, _ = graph
    bad = [f"{a} line {line}: imports {b}" for a, targets in sorted(edges.items()) for b, line in sorted(targets.items())
           if _layer(b) > _layer(a)]
    assert not bad, ("imports against the direction refimpl <- adapters <- conformance:\n"
                     + "\n".join("  " + b for b in bad))
