"""Sphinx configuration of the vae_jax documentation (MyST Markdown, executed notebooks, autodoc)."""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

import vae_jax  # noqa: E402

project = "vae_jax"
author = "The vae_jax authors"
copyright = "The vae_jax authors; Apache License 2.0"
release = vae_jax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
    "flagtable",
    "docstring_check",
]

# Markdown pages (.md) and MyST notebooks (.md with a jupytext header) are both read by myst-nb.
source_suffix = {".md": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Notebooks run at every build (they are small: the embedded digits, a minute each on a CPU);
# one that raises fails the build.
nb_execution_mode = os.environ.get("NB_EXECUTION_MODE", "force")
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_show_tb = True

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports = ["tensorflow", "tensorflow_datasets"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # dataclass fields listed once, under the class

# Flags such as --seed stay two hyphens (no en dashes).
smartquotes = False

html_theme = "sphinx_book_theme"
html_title = "vae_jax"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
}
html_static_path = []

# The notebooks' kernels import vae_jax from this checkout.
os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
