"""Sphinx configuration of the fastipc documentation.

Build:   sphinx-build -W --keep-going -b html docs docs/_build/html
Doctest: sphinx-build -W --keep-going -b doctest docs docs/_build/doctest

The pages are Markdown (MyST), like the README and the layout documents they grew from; the
API reference is reStructuredText, generated from the docstrings by autodoc. fastipc must be
importable (``pip install -e '.[docs]'``): autodoc and the doctests use the installed package.
"""

from __future__ import annotations

import fastipc

project = "fastipc"
author = "fastipc developers"
copyright = "fastipc developers"
release = fastipc.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", ".venv", "**/.pytest_cache"]

# The layout documents number their own headings; anchors for in-page links.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# Docstrings: signatures come from the code; types are shown in the signature only.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_preserve_defaults = True
napoleon_google_docstring = False
napoleon_numpy_docstring = False

# The Python inventory is read from the copy in _intersphinx/ (the CPython 3.11 docs' own
# objects.inv), so that the build needs no network and gives the same links everywhere; the
# published inventory is the fallback.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", ("_intersphinx/python.inv", None)),
}
intersphinx_timeout = 10

# Doctests: every block runs in a fresh namespace on the default backend; the examples clean
# up their own kernel objects (the same names are used by no test).
doctest_global_setup = """
import fastipc
"""
doctest_test_doctest_blocks = "default"

html_theme = "furo"
html_title = f"fastipc {release}"
html_static_path: list[str] = []

# Exception messages shown in the pages are compared too (Sphinx ignores them by default).
import doctest  # noqa: E402

doctest_default_flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1
