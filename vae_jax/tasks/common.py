"""Helpers shared by every family's task module: batched model queries on host arrays.

A query is a module-level function ``query(model, params, *batches, **options) -> array``.
:func:`apply_in_batches` runs it through one jitted program with the model (a hashable flax module)
and the options as static arguments and the params as an input, so every call with the same model
and batch shapes reuses one compiled program, and the persistent compilation cache can keep it
across runs (params are inputs of the program, not constants baked into it). Figure code that
applied the model op by op, or jitted a fresh closure per call, compiled each layer's ops or the
whole program again at each call.
"""

from __future__ import annotations

import numpy as np

from vae_jax import caches
from vae_jax.models.params import bare_params


@caches.jit_run_once(static_argnums=(0, 1, 2))
def run_query(query, model, options: tuple, params, *arrays):
    """``query(model, params, *arrays, **dict(options))``, compiled once per (query, model, options, shapes).

    Queries run once or a few times per process (figures, diagnostics): compiled by
    :func:`vae_jax.caches.jit_run_once`.
    """
    return query(model, params, *arrays, **dict(options))


def apply_in_batches(query, model, params, *arrays: np.ndarray, batch_size: int = 1000, **options) -> np.ndarray:
    """``query(model, params, *batches, **options)`` on ``arrays`` (same length), ``batch_size`` rows at a time.

    Returns the results concatenated on the host. ``query`` should be a module-level function: a
    closure made afresh at each call is a new static argument, so it compiles again every time.
    ``params``: the bare tree or flax's variables ``{"params": ...}``.
    """
    params = bare_params(params)
    arrays = tuple(np.asarray(a) for a in arrays)
    static = tuple(sorted(options.items()))
    return np.concatenate([
        np.asarray(run_query(query, model, static, params, *(a[i:i + batch_size] for a in arrays)))
        for i in range(0, len(arrays[0]), batch_size)
    ])
