"""Sphinx configuration of the flask-pgpool documentation.

Build it with ``pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html``.

Theme: pallets-sphinx-themes' ``flask`` theme. The people who read these pages
already know Flask's own documentation and that of its extensions built on the
same theme (Flask-SQLAlchemy, Flask-WTF...), so the page layout, the sidebar and
the way API entries look are what they expect; it needs no assets from the
network and builds offline.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The extensions of this site (the configuration and benchmark tables, rendered
# from the code and the committed results), and the checkout for ``benchmarks``.
sys.path[:0] = [str(HERE / "_ext"), str(HERE.parent)]

import flask_pgpool  # noqa: E402

project = "flask-pgpool"
copyright = "flask-pgpool contributors"
release = flask_pgpool.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "pallets_sphinx_themes",
    "sphinx_click",
    "pgpool_config",
    "pgpool_benchmarks",
]

# autodoc: the API page documents what the package exports, with the types of
# its signatures shown in the description rather than in long signatures.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autoclass_content = "class"

html_theme = "flask"
html_theme_options = {"index_sidebar_logo": False}
html_context: dict[str, object] = {"project_links": []}
html_sidebars = {
    "index": ["project.html", "localtoc.html", "searchbox.html"],
    "**": ["localtoc.html", "relations.html", "searchbox.html"],
}
singlehtml_sidebars = {"index": ["project.html", "localtoc.html"]}
html_title = f"flask-pgpool documentation ({version})"
html_show_sourcelink = False
# The version banner asks Read the Docs which versions exist; these pages are built locally.
version_banner = False

exclude_patterns = ["_build"]
# The site is for the code of this checkout: no inventories fetched from the network.
