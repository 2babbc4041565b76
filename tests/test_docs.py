"""The Sphinx docs: every registered equation and every convention has a docs entry, and the docs
build with warnings as errors (as CI runs them)."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import textwrap

import pytest

from rankspec.refimpl.conventions import Convention, all_conventions
from rankspec.refimpl.registry import FAMILIES, PAPERS, Equation, entries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
sys.path.insert(0, os.path.join(DOCS, "_ext"))

import rankspec_docs  # noqa: E402  (docs/_ext/rankspec_docs.py)

GEN = rankspec_docs.GENERATED_DIR

# Sphinx's own napoleon still uses a deprecated autodoc interface; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The mapping interface for autodoc options:DeprecationWarning",
                                        "ignore:The mapping interface for autodoc options:PendingDeprecationWarning")


@pytest.fixture(scope="module")
def pages():
    return rankspec_docs.generate_pages()


def _directive_targets(text):
    return re.findall(r"^\.\. auto(?:function|class|method):: (\S+)$", text, flags=re.M)


# ------------------------------------------------------------------ generated pages (no Sphinx build)

def test_every_registered_equation_is_on_its_family_page(pages):
    items = entries()
    assert items, "the registry is empty"
    for e in items:
        page = pages[f"{GEN}/{e.family}.rst"]
        assert e.qualname in _directive_targets(page), f"{e.qualname} has no autodoc entry on the {e.family} page"
        # the entry's citation is printed beside it: every (paper, equation) of the registry
        for paper, where in e.refs:
            assert f"<paper-{paper.lower()}>` {rankspec_docs.escape(where)}" in page, (e.qualname, paper, where)
    # and nothing is documented that is not registered (or documented twice)
    documented = [q for f in FAMILIES for q in _directive_targets(pages[f"{GEN}/{f}.rst"])]
    assert sorted(documented) == sorted(e.qualname for e in items)


def test_registry_page_has_a_row_per_reference():
    items = entries()
    page = rankspec_docs.registry_page(items, PAPERS, FAMILIES)
    for e in items:
        for paper, where in e.refs:
            row = (f"   * - :ref:`{paper} <paper-{paper.lower()}>`\n     - {rankspec_docs.escape(where)}\n"
                   f"     - :py:obj:`~{e.qualname}`\n")
            assert row in page, (e.qualname, paper, where)
    for key in PAPERS:
        assert f".. _paper-{key.lower()}:" in page


def test_every_family_has_a_page_and_empty_ones_say_so(pages):
    index = pages[f"{GEN}/index.rst"]
    populated = {e.family for e in entries()}
    for family, title in FAMILIES.items():
        page = pages[f"{GEN}/{family}.rst"]
        assert rankspec_docs.escape(title) in page
        assert re.search(rf"^   {re.escape(family)}$", index, flags=re.M), f"{family} missing from the toctree"
        assert ("No function is registered" in page) == (family not in populated)


def test_a_new_registration_appears_without_docs_edits():
    # a function registered later (here built by hand, not added to the live registry) in a family
    # that has no entry yet gets its entry, citation and paper on that family's page
    def new_loss(logits, labels):
        r"""A new loss.

        .. math:: \mathcal{L} = 0
        """

    families = dict(FAMILIES, newfam="A family added later")
    new = Equation("tests.fake.new_loss", "New Loss", (("DR", "Eqs. 5-7"),), "newfam", "loss", new_loss)
    before = rankspec_docs.generate_pages(families=families)
    assert "No function is registered in the ``newfam`` family yet" in before[f"{GEN}/newfam.rst"]
    assert "   newfam" in before[f"{GEN}/index.rst"]
    pages = rankspec_docs.generate_pages(items=list(entries()) + [new], families=families)
    page = pages[f"{GEN}/newfam.rst"]
    assert ".. autofunction:: tests.fake.new_loss" in page
    assert ":ref:`DR <paper-dr>` Eqs. 5-7" in page
    assert "No function is registered" not in page
    assert ":py:obj:`~tests.fake.new_loss`" in pages[f"{GEN}/registry.rst"]
    assert rankspec_docs.problems([new]) == []


class _Record:
    """Stands for a loss record: the public function calls ``RECORD.run``, the record holds the reference."""

    def __init__(self, reference):
        self.reference = reference


_THIN_RECORD = _Record(None)


def _thin_loss(logits, labels):
    r"""A thin registered loss.

    .. math:: \mathcal{L} = 0
    """
    return _THIN_RECORD.run(logits, labels)


def _real_shared_loop():
    """The AP / RS ranking-sorting loop (the unregistered helper the AP / RS records compute with)."""
    from rankspec.refimpl.reference.ranking import ranking_sorting_loop

    return ranking_sorting_loop


def test_thin_entries_link_to_the_code_that_computes_them():
    # a registered function that only dispatches through a record object (as the loss records do) to an
    # unregistered helper: its entry says "Computed by" that helper, with a link to its source lines, and
    # the helper gets a section of its own on the computation page (found from the code, no listing)
    from rankspec.refimpl.reference.primitives import smoothed_step

    loop = _real_shared_loop()
    _THIN_RECORD.reference = loop
    try:
        items = [Equation("tests.fake.thin_loss", "Thin", (("RS", "Eq. 1"),), "ap-rs", "loss", _thin_loss),
                 Equation("rankspec.refimpl.reference.primitives.smoothed_step", "H", (("BRL", "Eq. 3.2"),), "primitives",
                          "primitive", smoothed_step)]
        assert rankspec_docs.computed_by(_thin_loss, {smoothed_step})[:1] == [loop]
        pages = rankspec_docs.generate_pages(items=items, conventions=[])
    finally:
        _THIN_RECORD.reference = None
    family = pages[f"{GEN}/ap-rs.rst"]
    q = f"{loop.__module__}.{loop.__qualname__}"
    assert f":Computed by: :py:obj:`~{q}`" in family
    comp = pages[f"{GEN}/{rankspec_docs.SHARED_PAGE}.rst"]
    assert f".. autofunction:: {q}" in comp and ":py:obj:`~tests.fake.thin_loss`" in comp
    url = rankspec_docs.source_url(loop)
    assert url == "../_modules/" + loop.__module__.replace(".", "/") + ".html#" + loop.__qualname__
    assert f"<{url}>`__" in comp  # "Source: file, lines a-b" is a link to the highlighted lines
    assert f"   {rankspec_docs.SHARED_PAGE}" in pages[f"{GEN}/index.rst"]


def test_entries_without_docstring_or_latex_are_reported():
    def undocumented(x):
        pass

    def no_math(x):
        """Just words."""

    def mk(f, where, kind="loss"):
        return Equation(f"m.{f.__name__}", "n", (("RS", where),), "ap-rs", kind, f)

    found = rankspec_docs.problems([mk(undocumented, "Sec. 3", "utility"), mk(no_math, "Eqs. 1-2"),
                                    mk(no_math, "Sec. 4.1"), mk(no_math, "Alg. 2", "primitive"),
                                    mk(no_math, "Eq. 2", "utility")])
    # every entry needs a docstring; a loss or primitive citing numbered equations needs LaTeX in it
    # (a section or algorithm citation, or a utility, does not)
    assert len(found) == 2
    assert "m.undocumented" in found[0] and "no docstring" in found[0]
    assert "m.no_math" in found[1] and "LaTeX" in found[1]
    assert rankspec_docs.problems(entries()) == []  # the live registry is clean


def test_every_convention_is_on_the_conventions_page(pages):
    page = pages[f"{GEN}/conventions.rst"]
    convs = all_conventions()
    assert convs
    for c in convs:
        section = re.escape((f"``{c.keyword}``: " if c.keyword else "") + rankspec_docs.escape(c.title))
        m = re.search(rf"^{section}\n~+\n\n(.*?)(?=\n\.\. _|\Z)", page, flags=re.M | re.S)
        assert m, f"no section for convention {c.title!r}"
        body = m.group(1)
        assert rankspec_docs.escape(c.description) in body
        assert rankspec_docs.escape(c.authors) in body
        for fn in c.applies_to:
            assert re.search(rf"(~[\w.]+\.|``){re.escape(fn)}(`|``)", body), (c.title, fn)
        if c.keyword:
            for choice in c.choices:
                assert repr(choice) in body, (c.keyword, choice)
            defaults = c.default.values() if isinstance(c.default, dict) else [c.default]
            for d in defaults:
                assert repr(d) in body, (c.keyword, d)


def test_convention_functions_really_take_the_keyword():
    # the Conventions page says "keyword K, functions X, Y, default D" (conventions.py: applies_to are the
    # functions that take the keyword): check that against the signatures of the registered functions
    by_name = {}
    for e in entries():
        by_name.setdefault(e.qualname.rsplit(".", 1)[-1], []).append(e)
    wrong = []
    for c in all_conventions():
        if c.keyword is None:
            continue
        for fn in c.applies_to:
            for e in by_name.get(fn, []):  # names that are not registered (e.g. torch modules) are not checked
                params = inspect.signature(e.func).parameters
                if c.keyword not in params:
                    wrong.append(f"{e.qualname} is listed for {c.keyword!r} but has no such parameter")
                    continue
                if isinstance(c.default, dict):
                    if fn not in c.default:
                        continue
                    expected = c.default[fn]
                else:
                    expected = c.default
                if params[c.keyword].default != expected:
                    wrong.append(f"{e.qualname}: {c.keyword}={params[c.keyword].default!r} in the signature, "
                                 f"{expected!r} on the Conventions page")
    assert not wrong, "\n".join(wrong)


def test_escape_renders_verbatim():
    docutils_core = pytest.importorskip("docutils.core")
    for s in ["normalise by |P| (Z = |P|)", "O((|P|+|N|) log |P|) and |P|^2", "*a* `b` _c x_ [1]_ \\d",
              "- not a list", "1. not a list", "H(x_ij) >= 0", "(a) nor this"]:
        doctree = docutils_core.publish_doctree(rankspec_docs.escape(s), settings_overrides={"report_level": 2,
                                                                                             "halt_level": 2})
        assert doctree.astext() == s
        assert [n.tagname for n in doctree.children] == ["paragraph"]


def test_docstring_pipes_and_references_are_escaped_outside_math_and_literals():
    lines = textwrap.dedent("""\
        Time O(|P| (|P| + |N|)), see :math:`|x|` and ``a | b``.

        .. math::

            \\ell = |P| + n_-

        Usage::

            x | y
        :param x: size |P|, O(n_+ n_-) and x_1, :func:`f_`
        | a line block
        """).splitlines()
    rankspec_docs.escape_docstring_pipes(lines)
    assert lines[0] == "Time O(\\|P\\| (\\|P\\| + \\|N\\|)), see :math:`|x|` and ``a | b``."
    assert lines[4] == "    \\ell = |P| + n_-"
    assert lines[8] == "    x | y"
    # "n_+" is no reference ("+" cannot follow one), "n_-" is
    assert lines[9] == ":param x: size \\|P\\|, O(n_+ n\\_-) and x_1, :func:`f_`"
    assert lines[10] == "| a line block"
    docutils_core = pytest.importorskip("docutils.core")
    doctree = docutils_core.publish_doctree(lines[0].replace(":math:", ""),
                                            settings_overrides={"report_level": 2, "halt_level": 2})
    assert doctree.astext() == "Time O(|P| (|P| + |N|)), see |x| and a | b."


def test_every_registering_module_is_imported_by_the_package():
    # the docs and `rankspec equations` list what importing rankspec.refimpl registers; a module that
    # registers functions but is not imported by the package would be missing from both
    code = textwrap.dedent("""
        import importlib, pkgutil
        import rankspec.refimpl as pkg
        from rankspec.refimpl.registry import entries
        before = {e.qualname for e in entries()}
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(m.name)
        missing = sorted({e.qualname for e in entries()} - before)
        print("\\n".join(missing))
        raise SystemExit(1 if missing else 0)
        """)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, f"registered but not imported by rankspec/refimpl/__init__.py:\n{r.stdout}{r.stderr}"


def test_readme_quickstart_markers_and_code_run():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    start, end = "<!-- quickstart-start -->", "<!-- quickstart-end -->"
    assert readme.count(start) == 1 and readme.count(end) == 1, "docs/quickstart.rst includes this README part"
    section = readme.split(start, 1)[1].split(end, 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the quick start has no python example"
    for code in blocks:
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT, timeout=120)


# ------------------------------------------------------------------ the real build, -W, as in CI

@pytest.fixture(scope="module")
def html(tmp_path_factory):
    # In a subprocess: autodoc (autodoc_preserve_defaults) rewrites the __signature__ of the functions it
    # documents, which would leak into every later test in this process that inspects signatures.
    out = tmp_path_factory.mktemp("docs_html")
    r = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                        "-d", str(out / ".doctrees"), DOCS, str(out)], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, f"sphinx -W failed:\n{r.stdout}\n{r.stderr}"
    return out


def _read(html, page):
    with open(html / page, encoding="utf-8") as f:
        return f.read()


def test_docs_build_with_warnings_as_errors(html):
    for page in ["index.html", "quickstart.html", f"{GEN}/index.html", f"{GEN}/conventions.html",
                 f"{GEN}/registry.html", f"{GEN}/{rankspec_docs.SHARED_PAGE}.html", "api.html",
                 "guides/check-your-port.html", "guides/oracle-in-tests.html", "guides/read-a-diagnosis.html"] + [f"{GEN}/{f}.html" for f in FAMILIES]:
        assert (html / page).is_file(), page
    index = _read(html, "index.html")
    for target in ["quickstart.html", f"{GEN}/index.html", f"{GEN}/conventions.html", f"{GEN}/registry.html"]:
        assert f'href="{target}' in index, target
    # every page in docs/ is reached from the index's contents
    for name in os.listdir(DOCS):
        stem, ext = os.path.splitext(name)
        if ext in (".rst", ".md") and stem != "index":
            assert f'href="{stem}.html' in index, name


def test_built_family_pages_show_each_function_with_equation_and_source(html):
    for e in entries():
        page = _read(html, f"{GEN}/{e.family}.html")
        m = re.search(rf'<dt class="sig sig-object py" id="{re.escape(e.qualname)}">(.*?)</dt>', page, flags=re.S)
        assert m, f"{e.qualname} not rendered on {e.family}.html"
        assert "viewcode-link" in m.group(1), f"{e.qualname} has no [source] link"
        body = page[m.end():].split("<section", 1)[0]  # the entry's docstring, up to the next entry's section
        if e.kind != "utility" and rankspec_docs._cites_equation(e):
            assert 'class="math' in body, f"{e.qualname}: no rendered equation"
        module = e.func.__module__.replace(".", "/")
        assert (html / "_modules" / f"{module}.html").is_file()
        assert e.citation.split(";")[0].split(" ", 1)[1] in page


def test_built_conventions_and_quickstart(html):
    conv = _read(html, f"{GEN}/conventions.html")
    for c in all_conventions():
        assert (c.keyword or c.title) in conv
    quick = _read(html, "quickstart.html")
    assert "rs_loss" in quick and "quickstart-start" not in quick
    # the README's Markdown is rendered (a heading and highlighted Python), not shown as Markdown source
    assert "## Quick start" not in quick and "```" not in quick
    assert re.search(r"<h2>Quick start: rankspec as an oracle", quick)
    assert 'class="highlight-python' in quick


def test_contents_list_each_page_once(html):
    index = _read(html, "index.html")
    body = index.split('class="toctree-wrapper', 1)[1]
    top = re.findall(r'<li class="toctree-l1"><a class="reference internal" href="([^"#]+)">', body)
    assert top and len(top) == len(set(top)), top
    titles = re.findall(r'<li class="toctree-l1"><a class="reference internal" href="[^"]+">([^<]+)</a>', body)
    assert len(titles) == len(set(titles)), titles
