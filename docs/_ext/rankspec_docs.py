"""Sphinx extension: rankspec's equation pages, generated from the registry.

At ``builder-inited`` the pages under ``docs/reference/`` are (re)written from
:func:`rankspec.refimpl.registry.entries`, :data:`~rankspec.refimpl.registry.FAMILIES`,
:data:`~rankspec.refimpl.registry.PAPERS` and
:func:`rankspec.refimpl.conventions.all_conventions`:

* ``reference/index.rst`` - the families, with a toctree of their pages;
* ``reference/<family>.rst`` - one page per family: for every registered
  function its paper citation(s), its source file and lines, and its
  docstring (with the ``.. math::`` equations) through autodoc, whose
  ``[source]`` link (viewcode) shows the implementing lines;
* ``reference/registry.rst`` - the whole registry as one table (paper,
  equation, function), like ``rankspec equations``, and the paper keys;
* ``reference/conventions.rst`` - every convention: keyword, functions taking
  it, default(s), options and what each paper / authors' code does.

A newly registered function (in any module imported by ``rankspec.refimpl``)
therefore appears with no edit under ``docs/``.  The page texts are built by
plain functions (:func:`generate_pages`) so the tests can check them without a
Sphinx build.  Registered functions without a docstring, and losses or
primitives that cite numbered equations (``Eq. 7``) but whose docstring
carries no LaTeX, are reported as Sphinx warnings, which ``-W`` turns into a
failed build.  Docstring prose may write ``|P|`` and ``O(n_+ n_-)`` freely:
:func:`escape_docstring_pipes` makes such pipes and underscores literal.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import textwrap
from typing import Dict, Iterable, List, Sequence

GENERATED_DIR = "reference"  #: folder (under docs/) the generated pages go to
SHARED_PAGE = "computation"  #: generated page of the unregistered shared code the registered functions call
RESERVED = ("index", "registry", "conventions", SHARED_PAGE)  #: generated page names a family key may not take
KIND_ORDER = {"loss": 0, "primitive": 1, "utility": 2}

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------- reST helpers

_SPECIAL = re.compile(r"([\\*`|_\[\]])")


def escape(text: object) -> str:
    """``text`` as inline reST that renders verbatim (one line, markup disabled).

    Collapses whitespace, backslash-escapes the inline-markup characters
    (``* ` | _ [ ] \\``; e.g. ``|P|`` would otherwise be a substitution
    reference) and the first character when it is not a letter (so ``- x`` or
    ``1. x`` cannot start a list).
    """
    s = " ".join(str(text).split())
    s = _SPECIAL.sub(r"\\\1", s)
    if s and not s[0].isalpha() and s[0] != "\\":
        s = "\\" + s
    return s


def literal(value: object) -> str:
    """``repr(value)`` as an inline literal."""
    r = repr(value)
    return f"``{r}``" if "``" not in r else escape(r)


def heading(title: str, char: str) -> List[str]:
    return [title, char * max(len(title), 3), ""]


def label(name: str) -> str:
    """A reST/Sphinx label made of ``[a-z0-9-]`` only."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def obj_ref(qualname: str) -> str:
    return f":py:obj:`~{qualname}`"


def paper_ref(key: str) -> str:
    return f":ref:`{key} <{label('paper-' + key)}>`"


# --------------------------------------------------------------------------- registry data

def _registry():
    from rankspec.refimpl import registry

    return registry


def _source_span(func):
    """``(relative path, first line, last line)`` of a function or class, or None."""
    try:
        path = inspect.getsourcefile(func)
        lines, start = inspect.getsourcelines(func)
    except (OSError, TypeError):
        return None
    rel = os.path.relpath(path, _REPO_ROOT)
    if rel.startswith(".."):
        rel = func.__module__.replace(".", "/") + ".py"
    return rel.replace(os.sep, "/"), start, start + len(lines) - 1


def source_url(func, depth: int = 1) -> str:
    """Relative URL of ``func``'s highlighted code on its ``sphinx.ext.viewcode`` page.

    viewcode writes ``_modules/<module path>.html`` with an anchor named by the object's
    qualified name inside its module; ``depth`` is how many folders below ``docs/`` the
    linking page lies.
    """
    func = inspect.unwrap(func)
    return ("../" * depth + "_modules/" + func.__module__.replace(".", "/") + ".html#"
            + func.__qualname__)


def _source_location(func, depth: int = 1) -> str:
    """A link ``refimpl/losses/ap_rs.py, lines 16-80`` to the viewcode page of a function or class."""
    span = _source_span(func)
    if span is None:
        return ""
    rel, first, last = span
    text = f"{rel}, lines {first}-{last}".replace("<", "\\<").replace("`", "\\`")
    return f"`{text} <{source_url(func, depth)}>`__"


# --------------------------------------------------------------------------- who computes what

#: modules (by name component) whose functions only check, parse or package inputs and results
NOT_COMPUTATION = frozenset({"_validate", "_inputs", "_result", "registry", "record", "conventions", "fast",
                             "vectors", "_constants", "constants", "data"})
#: unregistered public helpers with these name prefixes check inputs rather than compute
_CHECKER_PREFIXES = ("check_", "parse_", "validate")
_MAX_DEPTH = 4


def _in_refimpl(obj) -> bool:
    mod = getattr(obj, "__module__", None) or ""
    parts = mod.split(".")
    return mod.startswith("rankspec.refimpl") and not (set(parts[2:]) & NOT_COMPUTATION)


def _attributes(obj) -> List:
    """The field values of a plain object (e.g. a loss record holding its reference function)."""
    if inspect.ismodule(obj) or inspect.isroutine(obj) or inspect.isclass(obj):
        return []
    if dataclasses.is_dataclass(obj):
        return [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
    return list(getattr(obj, "__dict__", {}).values())


def _direct_callees(func) -> List:
    """Functions of ``rankspec.refimpl`` that ``func``'s source calls by a global name or ``module.name``,
    and those held by global objects it uses (``RECORD.run(...)`` with ``RECORD.reference = f``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return []
    glb = getattr(func, "__globals__", {})
    out = []

    def add(obj):
        if obj is None or not inspect.isfunction(obj):
            return
        obj = inspect.unwrap(obj)
        if obj is not func and _in_refimpl(obj) and obj not in out:
            out.append(obj)

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                add(glb.get(f.id))
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                base = glb.get(f.value.id)
                if inspect.ismodule(base):
                    add(getattr(base, f.attr, None))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in glb:
            for value in _attributes(glb[node.id]):
                add(value)
    return out


def computed_by(func, registered) -> List:
    """The functions that compute ``func``'s equations: the public ``rankspec.refimpl`` functions it
    calls, directly or through private helpers and unregistered public helpers (call order, up to
    four calls deep).  Registered functions (``registered``: a set of functions) end the descent:
    they have their own entry.  Input checking (``check_*``, ``parse_*`` helpers; the
    validation, input and result modules) and the fast backends are left out.
    """
    func = inspect.unwrap(func)
    if not inspect.isfunction(func):
        return []
    found, seen, frontier = [], {func}, [func]
    for _ in range(_MAX_DEPTH):
        nxt = []
        for f in frontier:
            for c in _direct_callees(f):
                if c in seen:
                    continue
                seen.add(c)
                public = not c.__name__.startswith("_")
                if c in registered:
                    found.append(c)
                    continue
                if public and c.__name__.startswith(_CHECKER_PREFIXES):
                    continue
                if public:
                    found.append(c)
                nxt.append(c)
        frontier = nxt
    return found


def shared_functions(items: Sequence) -> Dict:
    """``{unregistered helper: [entries whose equations it computes]}``, in first-use order."""
    registered = {inspect.unwrap(e.func) for e in items}
    out: Dict = {}
    for e in sorted(items, key=_sort_key):
        for c in computed_by(e.func, registered):
            if c not in registered:
                out.setdefault(c, []).append(e)
    return out


def _qualified(func) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def _computed_by_field(e, items: Sequence) -> List[str]:
    by_func = {inspect.unwrap(x.func): x for x in items}
    parts = []
    for c in computed_by(e.func, set(by_func)):
        if c in by_func:
            parts.append(obj_ref(by_func[c].qualname))
        else:
            parts.append(f"{obj_ref(_qualified(c))} (:ref:`details <{label('computation-' + _qualified(c))}>`, "
                         f"{_source_location(c)})")
    return [f":Computed by: {', '.join(parts)}"] if parts else []


def _sort_key(e):
    try:
        line = inspect.getsourcelines(e.func)[1]
    except (OSError, TypeError):
        line = 0
    return (KIND_ORDER.get(e.kind, 9), e.func.__module__, line, e.qualname)


def _autodoc_directive(e, items: Sequence) -> List[str]:
    """The autodoc directive documenting entry ``e``."""
    func = e.func
    if inspect.isclass(func):
        # members registered on their own are documented by their own entry
        own = sorted(x.qualname.rsplit(".", 1)[-1] for x in items
                     if x.qualname.startswith(e.qualname + "."))
        lines = [f".. autoclass:: {e.qualname}", "   :members:"]
        if own:
            lines.append("   :exclude-members: " + ", ".join(own))
        return lines
    if "." in func.__qualname__ and "<locals>" not in func.__qualname__:  # a method
        return [f".. automethod:: {e.qualname}"]
    return [f".. autofunction:: {e.qualname}"]


def _cites_equation(e) -> bool:
    """Whether an entry cites numbered equations (``Eq. 7``, ``Eqs. 3-5``), not only sections or algorithms."""
    return any(re.search(r"\bEqs?\b", where) for _, where in e.refs)


def problems(items: Iterable) -> List[str]:
    """What keeps a registered entry from a useful docs entry (empty when fine)."""
    out = []
    for e in items:
        doc = inspect.getdoc(e.func) or ""
        if not doc.strip():
            out.append(f"{e.qualname} (registered as {e.citation}) has no docstring; the docs show the "
                       "docstring with the equation beside the citation")
        elif e.kind != "utility" and _cites_equation(e) and ":math:" not in doc and ".. math::" not in doc:
            out.append(f"{e.qualname} (registered as {e.citation}) cites an equation but has no LaTeX in "
                       "its docstring; add a '.. math::' block (or :math: role) with the equation")
    return out


# --------------------------------------------------------------------------- pages

def family_page(family: str, title: str, items: Sequence, all_items: Sequence | None = None) -> str:
    """reST of the page of ``family`` listing ``items`` (the entries of that family)."""
    all_items = items if all_items is None else all_items
    items = sorted((e for e in items if e.family == family), key=_sort_key)
    out = [f".. _{label('family-' + family)}:", ""]
    out += heading(escape(title), "=")
    out += [f"Family key ``{family}``.  Generated from the equation registry "
            "(:mod:`rankspec.refimpl.registry`): every function registered with "
            f"``family=\"{family}\"`` is listed here with the paper equations it implements, "
            "the equations themselves and a ``[source]`` link to the implementing lines.", ""]
    if not items:
        out += [".. note::", "",
                f"   No function is registered in the ``{family}`` family yet.  Functions decorated "
                f"with ``@implements(..., family=\"{family}\")`` will appear here automatically.", ""]
        return "\n".join(out)

    papers = list(dict.fromkeys(p for e in items for p in e.papers))
    out += ["Papers cited on this page:", ""]
    reg = _registry()
    out += [f"* {paper_ref(p)}: {escape(reg.PAPERS.get(p, p))}" for p in papers]
    out += [""]

    out += [".. list-table:: Functions on this page", "   :header-rows: 1", "   :widths: 30 35 25 10", "",
            "   * - Function", "     - Paper equations", "     - Name", "     - Kind"]
    for e in items:
        out += [f"   * - {obj_ref(e.qualname)}", f"     - {escape(e.citation)}", f"     - {escape(e.name)}",
                f"     - {e.kind}"]
    out += [""]

    for e in items:
        out += heading(escape(e.name), "-")
        out += [f":Implements: {'; '.join(paper_ref(p) + ' ' + escape(w) for p, w in e.refs)}",
                f":Function: ``{e.qualname}`` ({e.kind})"]
        loc = _source_location(e.func)
        if loc:
            out += [f":Source: {loc}"]
        out += _computed_by_field(e, all_items)
        out += [""]
        out += _autodoc_directive(e, all_items)
        out += [""]
    return "\n".join(out)


def families_index(families: Dict[str, str], items: Sequence) -> str:
    out = heading("Equations by paper family", "=")
    out += ["One page per family of the equation registry.  Each page puts every registered "
            "function's paper citation next to its equations (LaTeX, from the docstring) and its "
            "source.  See also :doc:`registry` (the whole registry as one table) and "
            ":doc:`conventions`.", ""]
    out += [".. list-table::", "   :header-rows: 1", "   :widths: 15 65 10", "",
            "   * - Family", "     - Page", "     - Functions"]
    for key, title in families.items():
        n = sum(1 for e in items if e.family == key)
        out += [f"   * - ``{key}``", f"     - :doc:`{escape(title)} <{key}>`", f"     - {n}"]
    out += ["", f"The plain NumPy code the registered functions call to compute their equations (for example "
            f"the AP / RS ranking-sorting loop) is documented on :doc:`{SHARED_PAGE}`; each family page "
            "links every entry to the functions that compute it (``Computed by``).", ""]
    out += [".. toctree::", "   :maxdepth: 2", ""]
    out += [f"   {key}" for key in families]
    out += [f"   {SHARED_PAGE}", ""]
    return "\n".join(out)


def shared_page(items: Sequence) -> str:
    """reST of the page documenting the unregistered code the registered functions call."""
    shared = shared_functions(items)
    out = [f".. _{label('family-' + SHARED_PAGE)}:", ""]
    out += heading("Reference computation: the code behind the registered functions", "=")
    out += ["Most registered functions are thin: they check their inputs, pick a backend and call the "
            "plain NumPy code that computes the equations they are registered for -- for the AP / RS "
            "family one ranking-sorting loop shared by four losses.  This page documents that code, "
            "found by following each registered function's calls at build time (so it follows the code "
            "when it moves).  Each section names the registered functions whose equations it computes; "
            "each family page links every entry here (``Computed by``).", ""]
    if not shared:
        out += [".. note::", "", "   No registered function calls unregistered shared code.", ""]
        return "\n".join(out)
    for func, users in shared.items():
        q = _qualified(func)
        out += [f".. _{label('computation-' + q)}:", ""]
        out += heading(f"``{func.__name__}``", "-")
        out += [f":Function: ``{q}``"]
        loc = _source_location(func)
        if loc:
            out += [f":Source: {loc}"]
        out += [":Computes the equations of: " + ", ".join(
            f"{obj_ref(e.qualname)} ({paper_ref(e.refs[0][0])} {escape(e.refs[0][1])})" for e in users), ""]
        out += [f".. autofunction:: {q}", ""]
    return "\n".join(out)


def registry_page(items: Sequence, papers: Dict[str, str], families: Dict[str, str]) -> str:
    out = [":tocdepth: 1", ""]
    out += heading("Equation registry", "=")
    out += ["Every registered reference function, one row per (paper, equation) it implements: the "
            "table printed by ``rankspec equations`` (the ``--paper KEY`` option filters it).  "
            "Functions link to their family page.", ""]
    if not items:
        out += [".. note::", "", "   No function is registered yet.", ""]
    else:
        out += [".. list-table::", "   :header-rows: 1", "   :widths: 8 22 30 30 10", "",
                "   * - Paper", "     - Equation", "     - Function", "     - Name", "     - Family"]
    for e in items:
        for paper, where in e.refs:
            out += [f"   * - {paper_ref(paper)}", f"     - {escape(where)}", f"     - {obj_ref(e.qualname)}",
                    f"     - {escape(e.name)}", f"     - :doc:`{e.family} <{e.family}>`"]
    out += [""]
    out += heading("Paper keys", "-")
    for key, ref in papers.items():
        n = sum(1 for e in items if key in e.papers)
        out += [f".. _{label('paper-' + key)}:", "", f"``{key}``", f"   {escape(ref)}.  "
                f"{n} registered function{'s' if n != 1 else ''}.", ""]
    return "\n".join(out)


def _functions(names: Sequence[str], items: Sequence) -> str:
    parts = []
    for name in names:
        hits = [e for e in items if e.qualname.rsplit(".", 1)[-1] == name or e.qualname == name]
        if hits:
            parts += [obj_ref(e.qualname) for e in hits]
        else:
            parts.append(f"``{name}``")
    return ", ".join(parts)


def _default(c) -> str:
    if c.keyword is None:
        return escape(c.default)
    if isinstance(c.default, dict):
        return "; ".join(f"``{fn}``: {literal(v)}" for fn, v in c.default.items())
    return literal(c.default)


def _convention_family(c, items: Sequence, families: Dict[str, str]) -> str | None:
    """Family of the first registered loss a convention applies to (else of the first registered
    function; None when none is registered)."""
    hits = [e for name in c.applies_to for e in items if e.qualname.rsplit(".", 1)[-1] == name or e.qualname == name]
    hits.sort(key=lambda e: e.kind != "loss")  # stable: losses first, in applies_to order
    return hits[0].family if hits else None


def conventions_page(conventions: Sequence, items: Sequence, families: Dict[str, str] | None = None) -> str:
    families = dict(_registry().FAMILIES if families is None else families)
    out = [":tocdepth: 1", ""]
    out += heading("Conventions", "=")
    out += ["Every choice the papers leave open, or that the authors' code resolves differently from "
            "the printed equations, is an explicit keyword argument of the reference functions whose "
            "default reproduces the authors' code.  Behaviour that is fixed rather than a keyword "
            "(e.g. zero positives) is listed too, with what rankspec returns.  This page is generated "
            "from :func:`rankspec.refimpl.conventions.all_conventions`; the conformance harness "
            "searches the same options when it diagnoses a disagreeing implementation.  Conventions "
            "are grouped by the family of the functions they apply to.", ""]
    labels: List[str] = []
    for c in conventions:
        base = label("convention-" + (c.keyword or c.title))
        lab, k = base, 2
        while lab in labels:
            lab, k = f"{base}-{k}", k + 1
        labels.append(lab)
    groups: Dict[str | None, list] = {}
    for c, lab in zip(conventions, labels):
        groups.setdefault(_convention_family(c, items, families), []).append((c, lab))
    order = [f for f in families if f in groups] + [f for f in groups if f not in families]
    if not conventions:
        out += [".. note::", "", "   No convention is registered yet.", ""]
    for fam in order:
        title = escape(families[fam]) if fam in families else "Other functions"
        out += heading(title, "-")
        if fam in families:
            out += [f"The functions are documented on :doc:`their family page <{fam}>`.", ""]
        out += [".. list-table::", "   :header-rows: 1", "   :widths: 15 25 25 15 20", "",
                "   * - Keyword", "     - Convention", "     - Default", "     - Options", "     - Functions"]
        for c, lab in groups[fam]:
            kw = f"``{c.keyword}``" if c.keyword else "(fixed)"
            opts = ", ".join(literal(o) for o in c.choices) or "--"
            out += [f"   * - {kw}", f"     - :ref:`{escape(c.title)} <{lab}>`", f"     - {_default(c)}",
                    f"     - {opts}", f"     - {_functions(c.applies_to, items)}"]
        out += [""]
        for c, lab in groups[fam]:
            title = (f"``{c.keyword}``: " if c.keyword else "") + escape(c.title)
            out += [f".. _{lab}:", ""]
            out += heading(title, "~")
            if c.keyword:
                out += [f":Keyword: ``{c.keyword}``"]
            else:
                out += [":Keyword: none: fixed, documented behaviour"]
            out += [f":Functions: {_functions(c.applies_to, items)}",
                    f":{'Default' if c.keyword else 'Behaviour'}: {_default(c)}"]
            if c.choices:
                out += [f":Options: {', '.join(literal(o) for o in c.choices)}"]
            out += [f":Meaning: {escape(c.description)}",
                    f":Papers and authors' code: {escape(c.authors)}", ""]
    return "\n".join(out)


def adapter_conventions_section() -> str:
    """Conventions that live above the NumPy reference: the torch adapters' and the harness's ``scope``.

    The reference functions take one ranking (a flat array); whether a batch is ranked as a whole or per
    image is a keyword of the torch adapters and an option the conformance harness searches.
    """
    from rankspec.conformance.specs import SCOPE

    out = [""] + heading("Adapter and harness conventions", "-")
    out += ["These keywords belong to the PyTorch adapters (:mod:`rankspec.adapters.torch`) rather than to "
            "the NumPy reference, which always ranks the array it is given; ``rankspec check`` searches "
            "them when it diagnoses a disagreeing implementation.", ""]
    out += [".. _convention-adapter-scope:", ""]
    out += heading(f"``{SCOPE.keyword}``: {escape(SCOPE.title)}", "~")
    out += [f":Keyword: ``{SCOPE.keyword}`` (with ``image_ids``)",
            ":Functions: torch adapters " + ", ".join(f"``{n}``" for n in SCOPE.applies_to)
            + " and their modules",
            f":Default: {literal(SCOPE.default)}",
            f":Options: {', '.join(literal(o) for o in SCOPE.choices)}",
            f":Meaning: {escape(SCOPE.description)}",
            f":Papers and authors' code: {escape(SCOPE.authors)}", ""]
    return "\n".join(out)


def generate_pages(items: Sequence | None = None, conventions: Sequence | None = None,
                   families: Dict[str, str] | None = None,
                   papers: Dict[str, str] | None = None) -> Dict[str, str]:
    """``{path relative to docs/: reST text}`` of every generated page.

    Defaults: the live registry, conventions, families and papers.
    """
    reg = _registry()
    items = list(reg.entries() if items is None else items)
    families = dict(reg.FAMILIES if families is None else families)
    papers = dict(reg.PAPERS if papers is None else papers)
    if conventions is None:
        from rankspec.refimpl.conventions import all_conventions

        conventions = all_conventions()
    for key in families:
        if key in RESERVED or label(key) != key:
            raise ValueError(f"family key {key!r} cannot be a docs page name (reserved or not [a-z0-9-])")
    pages = {f"{GENERATED_DIR}/index.rst": families_index(families, items),
             f"{GENERATED_DIR}/registry.rst": registry_page(items, papers, families),
             f"{GENERATED_DIR}/conventions.rst": conventions_page(list(conventions), items, families)
             + adapter_conventions_section(),
             f"{GENERATED_DIR}/{SHARED_PAGE}.rst": shared_page(items)}
    for key, title in families.items():
        pages[f"{GENERATED_DIR}/{key}.rst"] = family_page(key, title, items)
    return pages


def write_pages(srcdir: str, pages: Dict[str, str]) -> List[str]:
    """Write ``pages`` under ``srcdir`` (only files whose text changed, so incremental builds
    stay incremental) and delete stale generated pages.  Returns the paths written."""
    written = []
    gen_dir = os.path.join(srcdir, GENERATED_DIR)
    os.makedirs(gen_dir, exist_ok=True)
    header = ".. This file is generated by docs/_ext/rankspec_docs.py from the equation registry; do not edit.\n\n"
    for rel, text in pages.items():
        path = os.path.join(srcdir, rel)
        text = header + text.rstrip() + "\n"
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    continue
        except FileNotFoundError:
            pass
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        written.append(rel)
    wanted = {os.path.normpath(os.path.join(srcdir, rel)) for rel in pages}
    for name in os.listdir(gen_dir):
        path = os.path.normpath(os.path.join(gen_dir, name))
        if name.endswith(".rst") and path not in wanted:
            os.remove(path)
    return written



# --------------------------------------------------------------------------- docstring pipes

#: directives whose content is verbatim (no inline markup inside)
_VERBATIM_DIRECTIVE = re.compile(r"\.\.\s+(math|code-block|code|sourcecode|literalinclude|highlight|"
                                 r"doctest|testcode|testoutput|csv-table|list-table|table)::")
_INLINE_LITERAL = re.compile(r"(``.+?``|`[^`]*`)")
_PIPE = re.compile(r"(?<!\\)\|")
#: a word-final underscore, which reST reads as a hyperlink reference (``n_-`` in ``O(n_+ n_-)``)
_REF_UNDERSCORE = re.compile(r"(?<=\w)(?<!\\)_(?=$|[\s\-.,:;!?)\]}'\"/>])")


def escape_docstring_pipes(lines: List[str]) -> None:
    """Make ``|`` and word-final ``_`` in docstring prose literal, in place.

    Docstrings write set sizes as ``|P|`` and ``O(|P| + |N|)``, and counts as
    ``O(n_+ n_-)``, which reST would read as substitution and hyperlink
    references (errors under ``-W``); docstrings here never mean those.  Both
    are escaped everywhere except in math and other verbatim blocks (``.. math::``,
    ``.. code-block::``, ``::`` literal blocks, ``>>>`` lines), inline literals
    and roles (``:math:`|x|```), line blocks and grid tables.
    """
    verbatim_indent = None
    for k, line in enumerate(lines):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if verbatim_indent is not None:
            if not stripped or indent > verbatim_indent:
                continue
            verbatim_indent = None
        if _VERBATIM_DIRECTIVE.match(stripped) or (stripped.endswith("::") and not stripped.startswith("..")):
            verbatim_indent = indent
            if not stripped.startswith(".."):  # "text::" - the text itself is prose
                lines[k] = _escape_pipes_in_line(line)
            continue
        if stripped.startswith(("|", "+", ">>>")):
            continue
        lines[k] = _escape_pipes_in_line(line)


def _escape_pipes_in_line(line: str) -> str:
    parts = _INLINE_LITERAL.split(line)
    for i in range(0, len(parts), 2):  # even parts are outside literals / roles
        parts[i] = _REF_UNDERSCORE.sub(r"\\_", _PIPE.sub(r"\\|", parts[i]))
    return "".join(parts)


def _process_docstring(app, what, name, obj, options, lines) -> None:
    escape_docstring_pipes(lines)


# --------------------------------------------------------------------------- Sphinx hook

def _generate(app) -> None:
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    reg = _registry()
    items = reg.entries()
    write_pages(app.srcdir, generate_pages(items))
    for msg in problems(items):
        logger.warning(msg, type="rankspec", subtype="registry")


def setup(app):
    app.connect("builder-inited", _generate)
    # after napoleon (priority 500) has turned NumPy sections into reST fields
    app.connect("autodoc-process-docstring", _process_docstring, priority=900)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
