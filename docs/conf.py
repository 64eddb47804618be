"""Sphinx configuration: the Markdown pages of docs/, an API reference from the numpydoc
docstrings and a gallery of examples/ (``make docs``; warnings are errors)."""

import sys
from pathlib import Path

# Document this checkout, whatever the environment's editable install points at (a
# clone that shares a virtual environment builds its own pages without reinstalling).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import smoothsk  # noqa: E402

project = "smoothsk"
author = "smoothsk developers"
release = version = smoothsk.__version__
root_doc = "site"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.json", "auto_examples/*.md5"]
autosummary_generate = True
autodoc_inherit_docstrings = False  # skorch's inherited docstrings are skorch's to check
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Pages link to files of the repository outside docs/ (results, benchmarks): fine on
# GitHub, not documents of this site.
suppress_warnings = ["myst.xref_missing"]
myst_heading_anchors = 3
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # every example runs at build time (about three minutes together), so the gallery
    # shows what it prints and an example the library broke fails the build
    "filename_pattern": r"/[^/]+\.py$",
    "plot_gallery": "True",
    "abort_on_example_error": True,
    "download_all_examples": False,
}
html_theme = "alabaster"


def _skip_foreign_members(app, what, name, obj, skip, options):
    """The API pages list smoothsk's own methods: the ones inherited from skorch and
    scikit-learn (``save_params``, ``get_loss``, ...) are theirs, documented there."""
    module = getattr(obj, "__module__", None) or ""
    if callable(obj) and module and not module.startswith("smoothsk") \
            and not name.startswith("__"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)
