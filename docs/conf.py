"""Sphinx configuration of gatedrnn's documentation site (``make docs`` builds it into ``site/``).

The API reference comes from the docstrings (autodoc + napoleon), the Markdown pages are read by
MyST, the tutorial and the examples are sphinx-gallery scripts run at every build, and the math is
rendered by a MathJax copied into the site (sphinx-mathjax-offline, SVG output: no font files,
nothing fetched when a page is viewed).
"""

from __future__ import annotations

import os
import warnings

import gatedrnn

project = "gatedrnn"
author = "gatedrnn contributors"
copyright = "gatedrnn contributors"
release = version = gatedrnn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "tutorial/GALLERY_HEADER.rst",
    "sg_execution_times.rst",
    "generated/**/*.ipynb",
    "generated/**/*.py",
    "generated/**/*.zip",
]

html_theme = "furo"
html_title = f"gatedrnn {release}"
html_static_path: list[str] = []
# the theme's own fonts are system fonts; nothing on a page is fetched from another site
html_theme_options = {"navigation_with_keys": True}

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# torch's own types appear in signatures; they are not documented on this site
nitpicky = False

sphinx_gallery_conf = {
    "examples_dirs": ["tutorial", "../examples"],
    "gallery_dirs": ["generated/tutorial", "generated/examples"],
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "show_memory": False,
    # the execution-times pages load DataTables from a CDN: the site must work offline
    "write_computation_times": False,
    # the last expression of a code block is shown only when it has an HTML form (the tutorial's
    # equation tables), not the repr of matplotlib's return values
    "capture_repr": ("_repr_html_",),
    "within_subsection_order": "FileNameSortKey",
    "reset_modules": ("matplotlib",),
    # a failing example fails the build
    "only_warn_on_example_error": False,
    "abort_on_example_error": True,
}

# the examples run on the CPU with two threads, as on the machines CI uses
os.environ.setdefault("OMP_NUM_THREADS", "2")
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")


def use_svg_mathjax(app, config):
    """MathJax's SVG output draws glyphs as paths: no web-font files to load (the CommonHTML
    output sphinx-mathjax-offline selects would load its fonts from the site)."""
    config.mathjax_path = "mathjax/tex-svg.js"


def setup(app):
    app.connect("config-inited", use_svg_mathjax, priority=900)
