"""Sphinx configuration for the rankspec docs.

Build (CI runs exactly this, warnings are errors)::

    python -m sphinx -W -b html docs docs/_build/html

The equation pages under ``reference/`` are generated at build time from the
equation registry by the local extension ``_ext/rankspec_docs.py``; any other
page goes into one of the toctrees of ``index.rst`` (a page in none fails the
``-W`` build).  Neither the build nor the built pages need the network: the
theme (pydata-sphinx-theme) ships its assets, MathJax 3 is copied into
``_static/mathjax`` by ``sphinx-mathjax-offline`` and the guides' examples run
as doctests (``python -m sphinx -b doctest docs <out>``; ``tests/test_docs_guides.py``).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

import rankspec.refimpl  # noqa: E402  (fails early with a clear message if rankspec is not installed)

project = "rankspec"
author = "rankspec developers"
copyright = "rankspec developers"
release = version = rankspec.refimpl.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 from _static/mathjax: formulas render with no network
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
    "sphinx_copybutton",
    "myst_parser",  # the README's quick start, included as Markdown
    "rankspec_docs",
]

root_doc = "index"
# technical text: keep quotes and dashes exactly as written (e.g. 'h0', x >= 0, --)
smartquotes = False
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "guides/examples"]

# autodoc / napoleon: the reference docstrings are NumPy style with ``.. math::`` blocks.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = True

# viewcode: a [source] link beside every documented object, to the highlighted implementing lines.
viewcode_follow_imported_members = True
viewcode_line_numbers = True

# doctest: the guides' examples import the files under guides/examples
_GUIDE_EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guides", "examples")
doctest_path = [_GUIDE_EXAMPLES]
doctest_global_setup = f"""
import os, sys, warnings
EXAMPLES = {_GUIDE_EXAMPLES!r}
sys.path.insert(0, EXAMPLES)
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
warnings.simplefilter("ignore", RuntimeWarning)
"""
# docstrings' ``>>>`` lines are illustrations, not tests; only the guides' doctest directives run
doctest_test_doctest_blocks = ""

# MyST: headings get anchors (the included README section links within itself)
myst_heading_anchors = 3

# copybutton: copy commands and code without prompts or outputs
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = False

html_theme = "pydata_sphinx_theme"
html_title = f"rankspec {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],  # the default footer links to sphinx-doc.org / the theme's site: pages stay local
}
html_sidebars = {"**": ["sidebar-nav-bs"]}
html_show_sourcelink = False
