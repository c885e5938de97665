"""Helpers shared by every family's task module: batched model queries on host arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def apply_in_batches(fn, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Applies ``fn`` (jitted here) to ``x`` a host batch at a time and concatenates the results."""
    fn = jax.jit(fn)
    return np.concatenate([np.asarray(fn(jnp.asarray(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)])
