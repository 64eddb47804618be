"""Check the built documentation site in a real browser (headless Chromium).

Run after ``make docs``::

    python docs/check_site.py [--site docs/_build/html] [--browser chromium]

Every page is rendered by Chromium (``--headless --dump-dom``: the DOM after the page's
scripts ran, as a reader's browser shows it) and checked:

- every API-reference page of a class or function with parameters renders a
  "Parameters" section with at least one parameter;
- every gallery example's page shows the example's output (a rendered image or a
  captured text block);
- no link is dead: every relative link (with its ``#anchor``) points to a file of the
  site (and the anchor to an element of that page), and every link to the repository
  (``../benchmarks/results/...``, rendered as text when Sphinx cannot resolve it) exists.

Exits 1 with one line per problem, 0 when the site is clean.  Needs a Chromium binary
(Debian's ``chromium`` package); without one it says so and exits 2.
"""

from __future__ import annotations

import argparse
import html.parser
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]


class Page(html.parser.HTMLParser):
    """The parts of a rendered page the checks read: links, ids, sections, outputs."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.classes: list[str] = []
        self.text: list[str] = []
        self.images = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img":
            self.images += 1
        self.classes.extend((attrs.get("class") or "").split())

    def handle_data(self, data):
        self.text.append(data)


def render(browser: str, page: Path) -> str:
    """The page's DOM after Chromium ran it."""
    run = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
         "--virtual-time-budget=2000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    if run.returncode != 0 or "<html" not in run.stdout:
        raise RuntimeError(f"{page}: Chromium could not render it ({run.stderr.strip()[-200:]})")
    return run.stdout


def parse(dom: str) -> Page:
    page = Page()
    page.feed(dom)
    return page


def check_links(site: Path, path: Path, page: Page, pages: dict[Path, Page]) -> list[str]:
    problems = []
    for href in page.links:
        parts = urlsplit(href)
        if parts.scheme in ("http", "https", "mailto") or href.startswith("javascript:"):
            continue  # the site is checked offline
        if parts.scheme == "file":
            target = Path(unquote(parts.path))
        elif not parts.path:
            target = path
        else:
            target = (path.parent / unquote(parts.path)).resolve()
        if not target.exists():
            problems.append(f"{path.relative_to(site)}: dead link {href}")
            continue
        if parts.fragment and target.suffix == ".html" and target in pages \
                and parts.fragment not in pages[target].ids:
            problems.append(f"{path.relative_to(site)}: link {href} names no element")
    return problems


def check_repository_links(site: Path, path: Path, page: Page) -> list[str]:
    """Links into the repository that Sphinx renders as plain text (its warning for them is
    off): ``../benchmarks/results/...`` must exist beside ``docs/``."""
    problems = []
    text = "".join(page.text)
    for word in text.split():
        word = word.strip("()[],.;:`'\"")
        if word.startswith(("benchmarks/results/", "../benchmarks/results/")):
            target = ROOT / word.removeprefix("../")
            if not target.exists():
                problems.append(f"{path.relative_to(site)}: {word} does not exist")
    return problems


def takes_parameters(dotted: str) -> str | None:
    """The section an API entry's page must render its parameters under ("Parameters";
    "Attributes" for a dataclass, whose fields are its parameters), or None when the
    object takes none (a constant, an exception, a class whose ``__init__`` takes
    nothing of its own) or cannot be imported."""
    from smoothsk.docstrings import parameters_to_document, resolve_name

    try:
        wanted = parameters_to_document(resolve_name(dotted))
    except ImportError:
        return None
    return wanted and wanted[0]


def check_api_page(site: Path, path: Path, page: Page) -> list[str]:
    """An API page of a callable with parameters lists them under "Parameters"."""
    section = takes_parameters(path.stem)
    if section is None:
        return []
    text = " ".join("".join(page.text).split())
    if section not in text:
        return [f"{path.relative_to(site)}: no {section} section for {path.stem}'s parameters"]
    if "field-list" not in page.classes and "parameters" not in " ".join(page.classes):
        return [f"{path.relative_to(site)}: a {section} heading but no rendered parameters"]
    return []


def check_gallery_page(site: Path, path: Path, page: Page) -> list[str]:
    shows_output = page.images > 0 or "sphx-glr-script-out" in page.classes
    return [] if shows_output else [f"{path.relative_to(site)}: the example's output is missing"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=ROOT / "docs" / "_build" / "html")
    parser.add_argument("--browser", default=None,
                        help="Chromium binary (default: chromium or chromium-browser on PATH)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    browser = args.browser or shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        print("check_site: no Chromium on PATH (Debian: apt-get install chromium)",
              file=sys.stderr)
        return 2
    site = args.site.resolve()
    paths = sorted(p for p in site.rglob("*.html")
                   if not p.relative_to(site).parts[0].startswith(("_", ".")))
    if not paths:
        print(f"check_site: no pages under {site}; run make docs first", file=sys.stderr)
        return 2
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        doms = list(pool.map(lambda p: render(browser, p), paths))
    pages = {path.resolve(): parse(dom) for path, dom in zip(paths, doms)}
    problems = []
    for path, page in pages.items():
        problems += check_links(site, path, page, pages)
        problems += check_repository_links(site, path, page)
        relative = path.relative_to(site).parts
        if relative[0] == "api":
            problems += check_api_page(site, path, page)
        if relative[0] == "auto_examples" and path.name.startswith("plot_") or \
                (relative[0] == "auto_examples" and path.stem != "index"
                 and not path.stem.startswith("sg_")):
            problems += check_gallery_page(site, path, page)
    for problem in problems:
        print(problem)
    print(f"check_site: {len(pages)} pages rendered in {Path(browser).name}, "
          f"{len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
