"""The built docs in a real browser, with no network: every formula is typeset by the bundled MathJax
and every internal link of every page resolves.

Builds the docs as CI does (``sphinx -W``, in a subprocess), loads each page in headless Chromium from
``file://`` with the network cut off (a dead proxy and a host resolver that resolves nothing), lets
MathJax run (``--virtual-time-budget``) and reads the DOM Chromium dumps.  Needs Chromium
(``apt-get install chromium`` on Debian; ``.ci/run`` installs it); skips, saying so, where it is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium():
    env = os.environ.get("RANKSPEC_CHROMIUM")
    if env:
        return env if os.path.isfile(env) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.isfile("/usr/bin/chromium") else None


CHROMIUM = _chromium()
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (looked for "
                       + ", ".join(CANDIDATES) + " on PATH and /usr/bin/chromium; on Debian: apt-get install "
                       "chromium); the real-browser docs test needs it"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


class _Page(HTMLParser):
    """ids, hrefs, and what the math elements hold."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.hrefs, self.resources = set(), [], []
        self.math = 0  # elements with class "math" (Sphinx's MathJax markup)
        self.math_typeset = 0  # ... holding an mjx-container
        self.raw = []  # text inside math elements that still holds a TeX delimiter
        self._stack = []  # per open element: (tag, is a math element)
        self._math_depth = 0
        self._typeset_in_current = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "a" and a.get("href") is not None:
            self.hrefs.append(a["href"])
        if tag in ("script", "img", "iframe", "source", "video", "audio") and a.get("src"):
            self.resources.append(a["src"])
        if tag == "link" and a.get("href"):
            self.resources.append(a["href"])
        if tag in self.VOID:
            return
        is_math = "math" in (a.get("class") or "").split()
        if is_math and self._math_depth == 0:
            self.math += 1
            self._typeset_in_current = False
        if tag == "mjx-container" and self._math_depth and not self._typeset_in_current:
            self._typeset_in_current = True
            self.math_typeset += 1
        self._stack.append((tag, is_math))
        self._math_depth += is_math

    def handle_endtag(self, tag):
        while self._stack:
            t, is_math = self._stack.pop()
            self._math_depth -= is_math
            if t == tag:
                break

    def handle_data(self, data):
        if self._math_depth and ("\\(" in data or "\\[" in data or "$$" in data):
            self.raw.append(data.strip()[:80])


def _parse(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    p.close()
    return p


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs_browser")
    r = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                        "-d", str(out / ".doctrees"), str(DOCS), str(out / "html")], capture_output=True, text=True,
                       cwd=ROOT, timeout=600, env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))
    assert r.returncode == 0, f"sphinx -W failed:\n{r.stdout}\n{r.stderr}"
    return out / "html"


def _dump_dom(page: Path, profile: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--disable-extensions", "--disable-background-networking",
           "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",  # no network at all
           f"--user-data-dir={profile}", "--allow-file-access-from-files",
           "--virtual-time-budget=20000", "--dump-dom", page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "</html>" in r.stdout, (
        f"Chromium could not load {page}: exit {r.returncode}\n{r.stderr[-2000:]}")
    return r.stdout


@pytest.fixture(scope="module")
def rendered(html):
    """``{page path relative to the html root: DOM after scripts ran}`` for every page (the highlighted
    source pages under ``_modules/`` are checked from their HTML: they hold no math)."""
    pages = sorted(p for p in html.rglob("*.html")
                   if p.relative_to(html).parts[0] not in ("_modules", "_sources", "_static"))
    assert len(pages) > 10, pages

    def one(p):
        with tempfile.TemporaryDirectory() as profile:
            return p.relative_to(html).as_posix(), _dump_dom(p, profile)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(pool.map(one, pages))


def test_every_formula_is_typeset_offline(html, rendered):
    math_pages = 0
    problems = []
    for rel, dom in rendered.items():
        static = _parse((html / rel).read_text(encoding="utf-8"))
        page = _parse(dom)
        if static.math == 0:
            continue
        math_pages += 1
        if page.raw:
            problems.append(f"{rel}: raw TeX left in the rendered page, e.g. {page.raw[:3]}")
        if page.math_typeset != page.math or page.math != static.math:
            problems.append(f"{rel}: {page.math_typeset} of {page.math} formulas typeset by MathJax "
                            f"({static.math} in the built HTML)")
    assert math_pages >= 5, f"only {math_pages} pages with math: the equation pages are missing"
    for must in ("reference/ap-rs.html", "fast_paths.html"):
        assert _parse(rendered[must]).math_typeset > 0, must
    assert not problems, "\n".join(problems)


def test_math_is_rendered_from_local_files_only(html, rendered):
    # MathJax comes from _static/mathjax (bundled), never a CDN, and no page loads anything remote
    remote = []
    for p in html.rglob("*.html"):
        for url in _parse(p.read_text(encoding="utf-8")).resources:
            if urlsplit(url).scheme in ("http", "https") or url.startswith("//"):
                remote.append(f"{p.relative_to(html)}: {url}")
    for rel, dom in rendered.items():  # and nothing remote was added by the scripts
        for url in _parse(dom).resources:
            if urlsplit(url).scheme in ("http", "https") or url.startswith("//"):
                remote.append(f"{rel} (rendered): {url}")
    assert not remote, "pages load remote resources:\n" + "\n".join(sorted(set(remote))[:20])
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert 'src="../_static/mathjax/tex-chtml.js' in (html / "reference" / "ap-rs.html").read_text(encoding="utf-8")


def test_every_internal_link_resolves(html, rendered):
    ids = {}

    def ids_of(rel):
        if rel not in ids:
            text = rendered.get(rel)
            if text is None:
                text = (html / rel).read_text(encoding="utf-8")
            ids[rel] = _parse(text).ids
        return ids[rel]

    broken = []
    checked = 0
    sources = dict(rendered)
    for p in html.rglob("*.html"):
        rel = p.relative_to(html).as_posix()
        if rel.startswith("_modules/") and rel not in sources:
            sources[rel] = p.read_text(encoding="utf-8")
    for rel, text in sorted(sources.items()):
        for href in _parse(text).hrefs:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:")):
                continue  # external (pages may link out; they load nothing from there)
            target = (html / rel).parent / unquote(parts.path) if parts.path else html / rel
            target = Path(os.path.normpath(target))
            if target.is_dir():
                target = target / "index.html"
            checked += 1
            if not target.is_file():
                broken.append(f"{rel}: {href} -> no file {target.relative_to(html) if html in target.parents else target}")
                continue
            if parts.fragment and target.suffix == ".html":
                trel = target.relative_to(html).as_posix()
                if unquote(parts.fragment) not in ids_of(trel):
                    broken.append(f"{rel}: {href} -> no anchor #{parts.fragment} in {trel}")
    assert checked > 100, checked
    assert not broken, f"{len(broken)} broken internal link(s):\n" + "\n".join(broken[:40])


def test_source_links_and_the_shared_loop_page(html, rendered):
    # "Source: refimpl/..., lines a-b" is a link to the highlighted lines, and the loop that computes the
    # AP / RS family has its own section, linked from the entries it computes
    ap = rendered["reference/ap-rs.html"]
    assert "_modules/rankspec/refimpl/" in ap and "Computed by" in ap
    comp = rendered["reference/computation.html"]
    assert "ranking_sorting_loop" in comp
    assert "computation.html#computation-" in ap
