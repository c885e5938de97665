"""Regularisers on an encoder's Jacobian: the contractive autoencoder's penalty.

The contractive autoencoder (Rifai et al., 2011) adds
``lambda * ||J_h(x)||_F^2`` to the reconstruction loss, where
``J_h(x) = dh/dx`` is the Jacobian of the code ``h`` (``[D]``) with respect to
the input ``x`` (``[H, W, C]``, flattened to ``n = HWC``):

    ||J||_F^2 = sum_{j, i} (dh_j / dx_i)^2.

It pushes the code to be locally insensitive to the input, except along the
directions the reconstruction needs. Both ways to compute it,
:func:`jacobian_sq_frobenius` (exact) and :func:`hutchinson_sq_frobenius`
(an unbiased estimate, for inputs whose full Jacobian is too big), are pure
functions of an ``encode_fn`` that maps **one** example to its code (batched here with :func:`jax.vmap`).

References:
  Rifai, Vincent, Muller, Glorot & Bengio, "Contractive Auto-Encoders:
  Explicit Invariance During Feature Extraction", ICML 2011.
  Hutchinson, "A stochastic estimator of the trace of the influence matrix
  for Laplacian smoothing splines", 1989.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

JACOBIAN_MODES = ("rev", "fwd")
CONTRACTIVE_METHODS = ("exact", "hutchinson")

EncodeFn = Callable[[jax.Array], jax.Array]  # one example [H, W, C] -> code [D]


def jacobian_sq_frobenius(encode_fn: EncodeFn, x: jax.Array, mode: str = "rev") -> jax.Array:
    """Exact ``||d encode_fn / dx||_F^2`` per example ``[B]`` of a batch ``x`` ``[B, ...]``.

    ``mode``: ``"rev"`` (``jax.jacrev``, D backward passes; cheaper when the code is smaller than
    the input, the usual autoencoder) or ``"fwd"`` (``jax.jacfwd``, one forward pass per input element).
    """
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"mode must be one of {JACOBIAN_MODES}, got {mode!r}")
    jac_fn = jax.jacrev(encode_fn) if mode == "rev" else jax.jacfwd(encode_fn)

    def one(xi):
        return jnp.sum(jnp.square(jac_fn(xi)))  # jac: [D, *x.shape[1:]]

    return jax.vmap(one)(x)


def hutchinson_sq_frobenius(encode_fn: EncodeFn, x: jax.Array, key: jax.Array, num_samples: int = 1) -> jax.Array:
    """Unbiased Hutchinson estimate of ``||d encode_fn / dx||_F^2`` per example.

    ``||J||_F^2 = tr(J^T J) = E_v[v^T J^T J v] = E_v ||J v||^2`` for random
    ``v`` with ``E[v v^T] = I``; ``v`` is Rademacher (+-1 entries), which has
    the smallest variance of such estimators. Averages ``num_samples``
    Jacobian-vector products (``jax.jvp``) per example, each with its own
    ``v`` drawn from ``key``. Returns ``[B]``, one estimate per example.
    """
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    v = jax.random.rademacher(key, (num_samples, *jnp.shape(x)), jnp.result_type(x))  # [S, B, ...]

    def one(xi, vi):  # xi [...], vi [S, ...]
        jv = jax.vmap(lambda t: jax.jvp(encode_fn, (xi,), (t,))[1])(vi)  # [S, D]
        return jnp.mean(jnp.sum(jnp.square(jv), axis=-1))

    return jax.vmap(one, in_axes=(0, 1))(x, v)


def contractive_penalty(
    encode_fn: EncodeFn,
    x: jax.Array,
    method: str = "exact",
    key: jax.Array | None = None,
    num_samples: int = 1,
) -> jax.Array:
    """The contractive penalty ``||J_h(x)||_F^2`` per example, ``[B]``.

    ``method="exact"`` uses :func:`jacobian_sq_frobenius` (reverse mode); ``"hutchinson"`` uses
    :func:`hutchinson_sq_frobenius` and needs ``key``.
    """
    if method == "exact":
        return jacobian_sq_frobenius(encode_fn, x)
    if method == "hutchinson":
        if key is None:
            raise ValueError('method="hutchinson" needs a key')
        return hutchinson_sq_frobenius(encode_fn, x, key, num_samples)
    raise ValueError(f"method must be one of {CONTRACTIVE_METHODS}, got {method!r}")
