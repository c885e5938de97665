"""Vector quantization for the VQ-VAE: pure functions of arrays and explicit keys.

The VQ-VAE (van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete
Representation Learning", NeurIPS 2017) replaces each encoder output vector
z_e(x) by its nearest codebook vector::

    k(x) = argmin_k ||z_e(x) - e_k||^2,      z_q(x) = e_{k(x)}

and trains with::

    -log p(x | z_q(x)) + ||sg[z_e(x)] - e||^2 + beta ||z_e(x) - sg[e]||^2

where ``sg`` is the stop-gradient (identity forward, zero derivative;
``jax.lax.stop_gradient`` below is written exactly where the maths has it).
The arg-min has no gradient, so the decoder's gradient is copied straight
through to the encoder: ``z_q = z_e + sg[e_k - z_e]``.

Per-example contract (as in :mod:`vae_jax.losses`): the losses sum over the
trailing ``event_ndim`` axes (the grid and the code dimension) and never
reduce over the batch. They take the :class:`Quantized` that
:func:`vector_quantize` returns, which pairs ``z_e`` with the right array
(``codes``, not ``z_q``) for them.

Codebook learning options: the EMA codebook (:func:`ema_update`; the 2017
paper's appendix A.1 and Razavi, van den Oord & Vinyals, "Generating Diverse
High-Fidelity Images with VQ-VAE-2", NeurIPS 2019), k-means initialisation
(:func:`kmeans`), dead-code restarts (:func:`restart_dead_codes`) and cosine
matching (``cosine=True`` in :func:`vector_quantize`; Yu et al., "Vector-quantized
Image Modeling with Improved VQGAN", ICLR 2022).

Usage statistics (:func:`perplexity`, :func:`codes_used`) are computed from
counts accumulated over a whole evaluation set (:func:`code_counts`), never as a
mean of per-batch perplexities, which depends on the batch size.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vae_jax.losses import _sum_event

NORMALIZE_EPS = 1e-12


class Quantized(NamedTuple):
    """What :func:`vector_quantize` returns; ``[...]`` is the leading shape of ``z_e``.

    Attributes:
      z_q: ``[..., D]`` the decoder's input, ``z_e + sg[e_k - z_e]``: equal to
        the chosen code, with the gradient of the identity w.r.t. ``z_e`` and
        none w.r.t. the codebook (the straight-through estimator).
      codes: ``[..., D]`` the chosen codes ``e_k`` gathered from the codebook
        (the gradient reaches only those rows of the codebook).
      z_e: ``[..., D]`` the encoder output as matched: ``z_e`` itself, or
        l2-normalised with ``cosine``.
      indices: ``[...]`` int32 code index ``k`` of every vector.
      distances: ``[..., K]`` squared Euclidean distances to every code (of
        the normalised vectors with ``cosine``: ``2 - 2 cos``).
    """

    z_q: jax.Array
    codes: jax.Array
    z_e: jax.Array
    indices: jax.Array
    distances: jax.Array


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """``x / ||x||`` along ``axis`` (a zero vector stays zero)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, NORMALIZE_EPS)


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """``||z_n - e_k||^2`` as ``||z_n||^2 - 2 z_n . e_k + ||e_k||^2``: ``[N, D], [K, D] -> [N, K]``.

    The expansion needs one ``[N, K]`` matrix (from a matmul) instead of the
    ``[N, K, D]`` differences; it is clipped at 0 against rounding.
    """
    z_sq = jnp.sum(jnp.square(z), axis=-1, keepdims=True)  # [N, 1]
    e_sq = jnp.sum(jnp.square(codebook), axis=-1)  # [K]
    return jnp.maximum(z_sq - 2.0 * z @ codebook.T + e_sq[None, :], 0.0)


def vector_quantize(z_e: jax.Array, codebook: jax.Array, cosine: bool = False) -> Quantized:
    """Nearest-code quantization of ``z_e`` ``[..., D]`` (any leading shape) with ``codebook`` ``[K, D]``.

    The vectors are flattened to ``[N, D]`` for one ``[N, K]`` distance matrix.
    With ``cosine`` both the vectors and the codes are l2-normalised first, so
    the nearest code is the one of largest cosine similarity and the decoder
    sees unit vectors. Returns a :class:`Quantized`.
    """
    if codebook.ndim != 2 or codebook.shape[-1] != z_e.shape[-1]:
        raise ValueError(
            f"codebook must be [K, D] with D = {z_e.shape[-1]} (z_e's last axis), got shape {codebook.shape}"
        )
    if cosine:
        z_e = l2_normalize(z_e)
        codebook = l2_normalize(codebook)
    lead = z_e.shape[:-1]
    flat = z_e.reshape(-1, z_e.shape[-1])  # [N, D]
    distances = squared_distances(flat, codebook)  # [N, K]
    indices = jnp.argmin(distances, axis=-1).astype(jnp.int32)  # [N]
    codes = jnp.take(codebook, indices, axis=0).reshape(z_e.shape)  # [..., D]
    z_q = z_e + jax.lax.stop_gradient(codes - z_e)  # straight-through: d z_q / d z_e = I
    return Quantized(
        z_q=z_q,
        codes=codes,
        z_e=z_e,
        indices=indices.reshape(lead),
        distances=distances.reshape(*lead, codebook.shape[0]),
    )


def _check_quantized(function: str, quantized, event_ndim: int) -> None:
    """Raises unless ``quantized`` is a :class:`Quantized` whose ``z_e`` keeps a batch axis under ``event_ndim``."""
    if not isinstance(quantized, Quantized):
        raise TypeError(
            f"{function} takes the Quantized that vector_quantize returns (its codes carry the "
            f"codebook's gradient, z_q none), got {type(quantized).__name__}: "
            f"call {function}(vector_quantize(z_e, codebook))"
        )
    shape = jnp.shape(quantized.z_e)
    if len(shape) <= event_ndim:
        raise ValueError(
            f"{function}: z_e has shape {shape} (rank {len(shape)}), but event_ndim={event_ndim} "
            f"needs rank >= {event_ndim + 1} to keep a batch axis; pass event_ndim=rank-1 "
            f"(2 for [B, T, D] sequences, 3 for [B, H', W', D] grids)"
        )


def vq_codebook_loss(quantized: Quantized, event_ndim: int = 3) -> jax.Array:
    """``||sg[z_e] - e||^2`` per example, summed over the grid and code dimension.

    Trains only the codebook (moves the chosen codes towards the encoder
    outputs). It takes the whole :class:`Quantized`, so it always pairs
    ``z_e`` with ``codes`` (the gathered codebook rows, which carry the
    codebook's gradient), never with ``z_q`` (equal in value, but its gradient
    goes to the encoder: paired with ``z_q`` the codebook would learn nothing).

    ``event_ndim``: trailing axes of ``z_e`` that form one example: 3 for a ``[B, H', W', D]``
    grid, 2 for a ``[B, T, D]`` sequence, 1 for ``[B, D]``. Returns ``[B]`` (the axes before them).
    Raises ``TypeError`` for anything but a :class:`Quantized` (two arrays, say), ``ValueError``
    when ``z_e`` has no axis left before the event (``[B, T, D]`` under the default 3).

    Example, the VQ-VAE's VQ terms of a ``[B, T, D]`` sequence (``beta`` = 0.25):

    >>> import jax, jax.numpy as jnp
    >>> from vae_jax import quantize
    >>> z_e = jnp.array([[[0.75, 0.25], [0.0, 1.5]]])  # [B=1, T=2, D=2] encoder outputs
    >>> codebook = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # [K=2, D=2]
    >>> def vq_terms(z_e, codebook):
    ...     q = quantize.vector_quantize(z_e, codebook)
    ...     return quantize.vq_codebook_loss(q, 2) + 0.25 * quantize.vq_commitment_loss(q, 2)  # [B]
    >>> vq_terms(z_e, codebook)  # (1 + 0.25) * (0.125 + 0.25)
    Array([0.46875], dtype=float32)
    >>> jax.grad(lambda cb: vq_terms(z_e, cb).sum())(codebook)  # 2 (e_k - z_e), summed over its vectors
    Array([[ 0.5, -0.5],
           [ 0. , -1. ]], dtype=float32)
    """
    _check_quantized("vq_codebook_loss", quantized, event_ndim)
    return _sum_event(jnp.square(jax.lax.stop_gradient(quantized.z_e) - quantized.codes), event_ndim)


def vq_commitment_loss(quantized: Quantized, event_ndim: int = 3) -> jax.Array:
    """``||z_e - sg[e]||^2`` per example, summed over the grid and code dimension.

    Makes the encoder commit to its code; gives the codebook no gradient.
    The VQ-VAE weighs it by ``beta`` (0.25 in the paper). Takes the whole
    :class:`Quantized` (``z_e`` with the gradient to the encoder, not ``z_q``);
    ``event_ndim``, the ``[B]`` result and the errors as in :func:`vq_codebook_loss`.
    """
    _check_quantized("vq_commitment_loss", quantized, event_ndim)
    return _sum_event(jnp.square(quantized.z_e - jax.lax.stop_gradient(quantized.codes)), event_ndim)


# --- codebook usage -------------------------------------------------------------------


def code_counts(indices: jax.Array, num_codes: int, weights: jax.Array | None = None) -> jax.Array:
    """Histogram ``[K]`` (float32) of code indices of any shape; add histograms to accumulate.

    ``weights`` (broadcast against ``indices``) lets padded entries count 0.
    """
    flat = indices.reshape(-1)
    w = jnp.ones(flat.shape, jnp.float32) if weights is None else jnp.broadcast_to(weights, indices.shape).reshape(-1)
    return jnp.zeros((num_codes,), jnp.float32).at[flat].add(w.astype(jnp.float32))


def perplexity(counts: jax.Array) -> jax.Array:
    """``exp(H(p))`` with ``p = counts / sum(counts)`` (and ``0 log 0 = 0``): the effective number of codes.

    ``K`` for a uniform histogram over K codes, 1 when one code takes all.
    Give it counts accumulated over a whole evaluation set.
    """
    p = counts / jnp.maximum(jnp.sum(counts), 1e-12)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.exp(entropy)


def codes_used(counts: jax.Array) -> jax.Array:
    """Number of codes with a non-zero count (int32 ``[]``)."""
    return jnp.sum(counts > 0).astype(jnp.int32)


# --- EMA codebook ---------------------------------------------------------------------


class EMAState(NamedTuple):
    """Exponential moving averages behind an EMA codebook (one pytree, checkpointed with the train state).

    Attributes:
      cluster_size: ``[K]`` biased EMA of the number of vectors assigned to each code.
      code_sum: ``[K, D]`` biased EMA of the sum of the vectors assigned to each code.
      count: int32 ``[]`` EMA updates so far; the averages are divided by
        ``1 - decay**count`` (zero-debiasing) when read.
    """

    cluster_size: jax.Array
    code_sum: jax.Array
    count: jax.Array


def ema_init(num_codes: int, code_dim: int) -> EMAState:
    """Zero averages, no updates yet."""
    return EMAState(
        jnp.zeros((num_codes,), jnp.float32), jnp.zeros((num_codes, code_dim), jnp.float32), jnp.zeros((), jnp.int32)
    )


EMA_RULES = ("keep", "sonnet")  # what ema_update does to the codes not used in a step


def ema_update(
    state: EMAState,
    codebook: jax.Array,
    z_e: jax.Array,
    indices: jax.Array,
    decay: float = 0.99,
    epsilon: float = 1e-5,
    rule: str = "keep",
) -> tuple[jax.Array, EMAState]:
    """One EMA codebook step (van den Oord et al. 2017, appendix A.1; Razavi et al. 2019).

    With ``n_k`` the number of vectors of ``z_e`` assigned to code k and
    ``s_k`` their sum, the averages are updated (all codes) as::

        N_k <- decay N_k + (1 - decay) n_k,        m_k <- decay m_k + (1 - decay) s_k

    and read zero-debiased, ``N^_k = N_k / (1 - decay^t)``,
    ``m^_k = m_k / (1 - decay^t)`` after t updates (so the first step gives
    the cluster means, not means pulled 99% towards zero). The cluster
    sizes are Laplace-smoothed, ``N~_k = (N^_k + eps) / (n + K eps) * n``
    with ``n = sum_k N^_k``, so that no division is by zero, and the new
    codes are ``e_k = m^_k / N~_k``.

    ``rule`` says which codes take that value: ``"keep"`` (default), only the codes used in this
    step (an unused code's averages decay together, so it would barely move; a never-used code
    would become 0); ``"sonnet"``, every code, as Sonnet 2's and Haiku's ``VectorQuantizerEMA`` do
    (debiased the same way), so their runs can be reproduced exactly.

    ``codebook`` ``[K, D]`` holds the current codes, ``z_e`` ``[..., D]`` the encoder outputs as
    matched (``Quantized.z_e``) and ``indices`` ``[...]`` their codes; ``decay`` lies in [0, 1) and
    ``epsilon`` is the Laplace smoothing constant. Returns ``(codebook [K, D], state)``; call it
    only in training steps.
    """
    if rule not in EMA_RULES:
        raise ValueError(f"ema_update: rule must be one of {', '.join(EMA_RULES)}, got {rule!r}")
    num_codes, dim = codebook.shape
    flat = jax.lax.stop_gradient(z_e).reshape(-1, dim).astype(jnp.float32)  # [N, D]
    one_hot = jax.nn.one_hot(indices.reshape(-1), num_codes, dtype=jnp.float32)  # [N, K]
    batch_size = jnp.sum(one_hot, axis=0)  # [K] n_k
    batch_sum = one_hot.T @ flat  # [K, D] s_k
    cluster_size = decay * state.cluster_size + (1.0 - decay) * batch_size
    code_sum = decay * state.code_sum + (1.0 - decay) * batch_sum
    count = state.count + 1
    debias = 1.0 - decay ** count.astype(jnp.float32)
    size_hat = cluster_size / debias
    sum_hat = code_sum / debias
    total = jnp.sum(size_hat)
    smoothed = (size_hat + epsilon) / (total + num_codes * epsilon) * total  # [K]
    new_codes = (sum_hat / smoothed[:, None]).astype(codebook.dtype)
    if rule == "keep":
        new_codes = jnp.where((batch_size > 0)[:, None], new_codes, codebook)
    return new_codes, EMAState(cluster_size, code_sum, count)


def ema_reset_codes(
    state: EMAState, codebook: jax.Array, reset: jax.Array, decay: float = 0.99, weight: float = 1.0
) -> EMAState:
    """Restarts the averages of the codes where ``reset`` ``[K]`` is true at their (new) ``codebook`` vector.

    The reset code reads as ``weight`` vectors' worth of evidence at its new
    position (debiased ``N^_k = weight``, ``m^_k = weight * e_k``), so the
    next vectors assigned to it move it quickly.
    """
    debias = jnp.where(state.count > 0, 1.0 - decay ** state.count.astype(jnp.float32), 1.0)
    size = jnp.where(reset, weight * debias, state.cluster_size)
    code_sum = jnp.where(reset[:, None], weight * debias * codebook.astype(jnp.float32), state.code_sum)
    return EMAState(size, code_sum, state.count)


# --- dead-code restart ----------------------------------------------------------------


def update_steps_unused(steps_unused: jax.Array, counts: jax.Array) -> jax.Array:
    """Steps since each code was last used: 0 where ``counts > 0`` in this step, else one more."""
    return jnp.where(counts > 0, 0, steps_unused + 1).astype(steps_unused.dtype)


def restart_dead_codes(
    key: jax.Array, codebook: jax.Array, steps_unused: jax.Array, z_e: jax.Array, dead_after: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Moves every code unused for ``dead_after`` or more steps onto a random recent encoder output.

    Each dead code gets one of the vectors of ``z_e`` (``[..., D]``, this
    step's encoder outputs), drawn uniformly with ``key``; the draw is a
    function of the key alone, so a restored run restarts the same codes the
    same way. Returns ``(codebook [K, D], steps_unused [K], dead [K] bool)``, the restarted
    codes' counters set to 0.
    """
    num_codes, dim = codebook.shape
    flat = jax.lax.stop_gradient(z_e).reshape(-1, dim)
    dead = steps_unused >= dead_after
    choice = jax.random.randint(key, (num_codes,), 0, flat.shape[0])
    codebook = jnp.where(dead[:, None], flat[choice].astype(codebook.dtype), codebook)
    return codebook, jnp.where(dead, 0, steps_unused).astype(steps_unused.dtype), dead


# --- k-means initialisation -----------------------------------------------------------


def kmeans_plus_plus(key: jax.Array, points: jax.Array, num_clusters: int) -> jax.Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): ``[N, D] -> [K, D]``.

    The first centre is a uniform draw; each next one is drawn with
    probability proportional to its squared distance to the nearest centre
    chosen so far. Needs ``N >= 1``; with fewer distinct points than K the
    remaining centres repeat points.
    """
    n, dim = points.shape
    keys = jax.random.split(key, num_clusters)
    first = points[jax.random.randint(keys[0], (), 0, n)]
    centres = jnp.zeros((num_clusters, dim), points.dtype).at[0].set(first)
    nearest = jnp.sum(jnp.square(points - first), axis=-1)  # [N]

    def body(i, carry):
        centres, nearest = carry
        total = jnp.sum(nearest)
        logits = jnp.where(total > 0, jnp.log(jnp.maximum(nearest, 0.0) + 1e-30), 0.0)
        idx = jax.random.categorical(keys[i], logits)
        centre = points[idx]
        nearest = jnp.minimum(nearest, jnp.sum(jnp.square(points - centre), axis=-1))
        return centres.at[i].set(centre), nearest

    centres, _ = jax.lax.fori_loop(1, num_clusters, body, (centres, nearest))
    return centres


def lloyd_step(points: jax.Array, centres: jax.Array) -> jax.Array:
    """One Lloyd iteration: each centre moves to the mean of its points; an empty cluster keeps its centre."""
    assign = jnp.argmin(squared_distances(points, centres), axis=-1)
    one_hot = jax.nn.one_hot(assign, centres.shape[0], dtype=points.dtype)  # [N, K]
    sizes = jnp.sum(one_hot, axis=0)
    sums = one_hot.T @ points
    return jnp.where(sizes[:, None] > 0, sums / jnp.maximum(sizes, 1.0)[:, None], centres)


def kmeans(
    key: jax.Array, points: jax.Array, num_clusters: int, iterations: int = 10, cosine: bool = False
) -> jax.Array:
    """k-means++ seeding then ``iterations`` Lloyd steps over ``points`` ``[..., D]``: centres ``[K, D]``.

    Used to initialise a codebook from a batch of encoder outputs. With
    ``cosine`` the points are l2-normalised and the centres re-normalised
    after every step (spherical k-means).
    """
    points = jax.lax.stop_gradient(points).reshape(-1, points.shape[-1]).astype(jnp.float32)
    if cosine:
        points = l2_normalize(points)
    centres = kmeans_plus_plus(key, points, num_clusters)

    def step(_, centres):
        centres = lloyd_step(points, centres)
        return l2_normalize(centres) if cosine else centres

    return jax.lax.fori_loop(0, iterations, step, centres)
