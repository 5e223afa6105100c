"""Sphinx configuration for the c2sync documentation.

Build: ``pip install ".[docs]"`` then
``sphinx-build -W -n --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the checkout's c2sync, installed or not

import c2sync  # noqa: E402

project = "c2sync"
author = "The c2sync developers"
copyright = "the c2sync developers"
release = c2sync.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"c2sync {release}"

# Google-style docstrings (docs/style.md rule 8).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields: autodoc documents the members once
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "show-inheritance": True}

# Nitpicky mode (-n) checks every cross-reference. There is no intersphinx (the build must
# work without the network), so the standard library's names that appear in signatures
# cannot resolve; exactly those are listed here, nothing of c2sync's own. A new one shows
# up as "py:class reference target not found: NAME": add it only if it is external.
nitpick_ignore = [
    ("py:class", name)
    for name in (
        "collections.abc.Callable",
        "collections.abc.Iterable",
        "collections.abc.Iterator",
        "collections.abc.Mapping",
        "collections.abc.Sequence",
        "datetime.datetime",
        "enum.Enum",
        "os.PathLike",
        "ssl.SSLContext",
        # Private types in public signatures: the test seam's options, the emulator's base.
        "Options",
        "c2sync.emulator._knobs.FaultKnobs",
    )
]
