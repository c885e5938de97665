"""Warns (so ``sphinx-build -W`` fails) when a public function or class of a documented module has no docstring."""

from __future__ import annotations

import inspect

from sphinx.util import logging

logger = logging.getLogger(__name__)


def _check(app, what, name, obj, skip, options):
    if what != "module" or name.startswith("_"):
        return None
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return None
    module = getattr(obj, "__module__", "") or ""
    if module.startswith("vae_jax") and not (obj.__doc__ or "").strip():
        logger.warning(f"{module}.{name} is public but has no docstring (add one, or make the name private)")
    return None


def setup(app):
    app.connect("autodoc-skip-member", _check)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
