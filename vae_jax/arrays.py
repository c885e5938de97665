"""Array helpers every layer may use: stored pixels to floats, device arrays to the host, batched model
queries on host arrays (:func:`apply_in_batches`, padded to one batch shape).

A base module (NumPy, JAX and :mod:`vae_jax.compiling` only), below the maths, the train step, the data layer
and the driver that all call it (the layer table is in :mod:`vae_jax.protocol`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vae_jax import compiling


def pixels_to_float(x):
    """Stored pixels -> float32 in [0, 1]: ``uint8`` is divided by 255, floats become float32; other integer
    arrays (a VQ-VAE prior's code grids) are not pixels and pass through unchanged. Works on NumPy and JAX
    arrays alike (the dtype check is static), so the data can stay ``uint8`` in device memory."""
    if x.dtype == np.uint8:
        # A multiplication, not a division: XLA turns x / 255 into x * (1 / 255) anyway, and
        # this way the host (NumPy) and the device (XLA) give bit-identical floats.
        return x.astype(np.float32) * np.float32(1.0 / 255.0)
    if not np.issubdtype(x.dtype, np.floating):
        return x
    return x if x.dtype == np.float32 else x.astype(np.float32)


def batch_to_float(batch: dict) -> dict:
    """``batch`` with its images ``batch["x"]`` as float32 in [0, 1] (other entries untouched)."""
    return {**batch, "x": pixels_to_float(batch["x"])}


def to_host(tree):
    """``jax.device_get`` that also works for arrays spread over several processes (gathered to every process)."""
    import jax

    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def fetch(a):
        spread = isinstance(a, jax.Array) and not a.is_fully_addressable and not a.is_fully_replicated
        return np.asarray(multihost_utils.process_allgather(a, tiled=True) if spread else a)

    return jax.tree_util.tree_map(fetch, tree)


def bare_params(tree):
    """The bare params tree of ``tree``: a mapping whose only key is ``"params"`` (flax's variables, as
    ``model.init`` returns them) is unwrapped, anything else is returned as it is. The queries of
    :mod:`vae_jax.tasks`, the evaluation and the samplers take the bare tree inside."""
    if isinstance(tree, Mapping) and set(tree.keys()) == {"params"} and isinstance(tree["params"], Mapping):
        return tree["params"]
    return tree


@compiling.jit_run_once(static_argnums=(0, 1, 2))
def run_query(query, model, options: tuple, params, *arrays):
    """``query(model, params, *arrays, **dict(options))``, compiled once per (query, model, options, shapes)
    by :func:`vae_jax.compiling.jit_run_once`: queries run once or a few times per process (figures, diagnostics)."""
    return query(model, params, *arrays, **dict(options))


@compiling.jit_run_once(static_argnums=1)
def _standard_normal(key, shape: tuple):
    import jax

    return jax.random.normal(key, shape)


def standard_normal(key, shape: tuple) -> np.ndarray:
    """``jax.random.normal(key, shape)`` (float32) on the host: the same bits, compiled as a run-once program."""
    return np.asarray(_standard_normal(key, tuple(shape)))


def _padded(a: np.ndarray, start: int, size: int) -> np.ndarray:
    """Rows ``start : start + size`` of ``a``, padded to ``size`` rows with copies of its last row."""
    part = a[start : start + size]
    return np.pad(part, [(0, size - len(part))] + [(0, 0)] * (a.ndim - 1), mode="edge")


def apply_in_batches(query, model, params, *arrays: np.ndarray, batch_size: int = 1000, key=None, **options):
    """``query(model, params, *batches, **options)`` on ``arrays`` (same length), ``batch_size`` rows at a time.

    The one way to run a model over host arrays. Every batch has the same shape (``min(batch_size, N)``
    rows; the last is padded with copies of the last row and the padding's results dropped), so one
    compiled program serves every batch. ``query`` should be a module-level function: a closure made
    afresh at each call is a new static argument, so it compiles again every time. ``params``: the bare
    tree or flax's variables ``{"params": ...}``. With ``key``, batch i is queried as
    ``query(model, params, fold_in(key, i), *batches, **options)``. Returns the results (an array or a
    pytree of arrays, ``[N, ...]`` each) concatenated on the host.
    """
    import jax

    params = bare_params(params)
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError(f"apply_in_batches needs arrays of one non-zero length, got {[len(a) for a in arrays]}")
    size = max(1, min(int(batch_size), n))
    static = tuple(sorted(options.items()))
    outs = []
    for i, start in enumerate(range(0, n, size)):
        keys = () if key is None else (jax.random.fold_in(key, i),)
        batches = (_padded(a, start, size) for a in arrays)
        outs.append(jax.device_get(run_query(query, model, static, params, *keys, *batches)))
    return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts)[:n], *outs)
