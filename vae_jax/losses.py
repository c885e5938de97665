"""Pure per-example losses and log-densities for autoencoders and VAEs.

Every function here is a pure function of arrays (and, for sampling, an explicit PRNG key).
Each returns one value **per example**: it sums over the trailing ``event_ndim`` axes (the event)
and keeps every leading axis (batch, importance samples, seeds); the caller reduces over the batch.

Conventions: images are NHWC, so image likelihoods default to
``event_ndim=3`` (H, W, C); latent vectors are ``[..., D]``, so latent
densities default to ``event_ndim=1``.

Shape mistakes are loud, not broadcast: the two arrays a loss compares must
already agree (one may broadcast to the other, as x ``[B, H, W, C]`` against
logits ``[K, B, H, W, C]``), and an image batch without its channel axis
(``[B, 28, 28]`` under ``event_ndim=3``, which would sum the whole batch into
one number) raises a ``ValueError`` naming the argument.

References:
  Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
  Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)


def _event_axes(values: jax.Array, event_ndim: int) -> tuple[int, ...]:
    """The trailing ``event_ndim`` axes of ``values``: those of one example."""
    if event_ndim < 0 or event_ndim > values.ndim:
        raise ValueError(f"event_ndim must be between 0 and the array rank {values.ndim}, got {event_ndim}")
    return tuple(range(values.ndim - event_ndim, values.ndim))


def _sum_event(values: jax.Array, event_ndim: int) -> jax.Array:
    """Sums the trailing ``event_ndim`` axes of ``values``."""
    axes = _event_axes(values, event_ndim)
    return jnp.sum(values, axis=axes) if axes else values


# An image's channel axis holds at most this many channels (gray, gray + alpha, RGB, RGBA).
_MAX_IMAGE_CHANNELS = 4


def _check_event(function: str, name: str, values: jax.Array, event_ndim: int) -> None:
    """Raises ``ValueError`` when ``values`` is an image batch missing its channel axis
    (``[B, H, W]`` under ``event_ndim=3`` would be read as one ``H x W x C`` image)."""
    shape = jnp.shape(values)  # too few axes for the event is reported by _sum_event
    if event_ndim == 3 and len(shape) == 3 and shape[-1] > _MAX_IMAGE_CHANNELS:
        raise ValueError(
            f"{function}: {name} has shape {shape}, which event_ndim=3 reads as ONE image of {shape[-1]} "
            f"channels, summing the whole batch into one number; give the images a channel axis "
            f"([B, H, W, 1]: {name}[..., None]) or pass event_ndim=2"
        )


def _check_pair(function: str, names: tuple[str, str], a: jax.Array, b: jax.Array) -> None:
    """Raises ``ValueError`` unless one of ``a``, ``b`` already has their broadcast shape."""
    shape_a, shape_b = jnp.shape(a), jnp.shape(b)
    try:
        shape = jnp.broadcast_shapes(shape_a, shape_b)
    except ValueError:
        shape = None
    if shape not in (shape_a, shape_b):
        raise ValueError(
            f"{function}: {names[0]} has shape {shape_a} and {names[1]} has shape {shape_b}; "
            "they must be the same shape (or one broadcast to the other)"
        )


def neg_elbo(reconstruction_nll: jax.Array, kl: jax.Array, beta: float = 1.0) -> jax.Array:
    """The negative ELBO per example: -log p(x|z) + beta * KL(q(z|x) || p(z)), in nats.

    -ELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || p(z)) (Kingma & Welling 2014,
    eq. 3), with the expectation estimated by the samples behind
    ``reconstruction_nll``; ``beta`` weights the KL (Higgins et al. 2017).

    ``reconstruction_nll`` (e.g. ``bernoulli_nll(logits, x)``) and ``kl`` (e.g.
    ``gaussian_kl(mean, logvar)``) are ``[B]``; so is the result. Raises ``ValueError``
    unless both have the same shape with a batch axis: a scalar reconstruction term added to a
    ``[B]`` KL would otherwise broadcast and silently weight the KL by 1/B after a mean.
    """
    recon_shape, kl_shape = jnp.shape(reconstruction_nll), jnp.shape(kl)
    if recon_shape != kl_shape or len(recon_shape) == 0:
        raise ValueError(
            f"neg_elbo: reconstruction_nll has shape {recon_shape} and kl has shape {kl_shape}; both must be "
            "[B], one value per example (a reconstruction term with too few axes usually comes from images "
            "without a channel axis, [B, H, W], under event_ndim=3: use x[..., None])"
        )
    return reconstruction_nll + beta * kl


def gaussian_kl(mean: jax.Array, logvar: jax.Array, event_ndim: int = 1) -> jax.Array:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) in closed form, in nats.

    KL = 1/2 * sum_i (exp(logvar_i) + mean_i^2 - 1 - logvar_i)
    (Kingma & Welling 2014, appendix B). Some lecture slides write the sum
    without the factor 1/2; that is twice the KL divergence.

    ``mean``, ``logvar``: ``[..., D]`` posterior means and log-variances; ``event_ndim``: trailing
    axes that form one example (1 for latent vectors). Returns ``[...]``, one KL value per example.
    """
    _check_pair("gaussian_kl", ("mean", "logvar"), mean, logvar)
    _check_event("gaussian_kl", "mean", mean, event_ndim)
    kl_per_dim = 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)
    return _sum_event(kl_per_dim, event_ndim)


def gaussian_kl_between(
    mean_q: jax.Array,
    logvar_q: jax.Array,
    mean_p: jax.Array,
    logvar_p: jax.Array,
    event_ndim: int = 1,
) -> jax.Array:
    """KL(N(mean_q, diag(exp(logvar_q))) || N(mean_p, diag(exp(logvar_p)))).

    ::

      KL = 1/2 * sum_i (logvar_p - logvar_q
                        + (exp(logvar_q) + (mean_q - mean_p)^2) / exp(logvar_p) - 1).

    Used between a posterior and a learned prior in hierarchical VAEs
    (Sønderby et al. 2016; Vahdat & Kautz 2020). With ``mean_p = 0`` and
    ``logvar_p = 0`` it equals :func:`gaussian_kl`.

    Returns ``[...]``, one KL value per example (all four inputs broadcast together).
    """
    kl_per_dim = 0.5 * (
        logvar_p - logvar_q + (jnp.exp(logvar_q) + jnp.square(mean_q - mean_p)) * jnp.exp(-logvar_p) - 1.0
    )
    return _sum_event(kl_per_dim, event_ndim)


def bernoulli_nll(logits: jax.Array, x: jax.Array, event_ndim: int = 3) -> jax.Array:
    """-log p(x | logits) for independent Bernoulli pixels, in nats.

    -log p = sum softplus(l) - x * l, which is the binary cross-entropy and
    stays finite and exact for ``|logits|`` of 1e4 and more. ``x`` may hold gray
    values in [0, 1] (used as Bernoulli means, as the reference VAE does);
    then this is the cross-entropy, not a normalised log-likelihood.

    ``logits`` (e.g. ``[B, H, W, C]``) and targets ``x`` in [0, 1] of the same shape; ``event_ndim``
    trailing axes form one example (3 for NHWC images). Returns ``[B]`` (the leading axes).
    Raises ``ValueError`` if the shapes differ (beyond one broadcasting to the other) or images
    lack their channel axis.
    """
    _check_pair("bernoulli_nll", ("logits", "x"), logits, x)
    _check_event("bernoulli_nll", "x", x, event_ndim)
    _check_event("bernoulli_nll", "logits", logits, event_ndim)
    return _sum_event(_binary_cross_entropy(logits, x), event_ndim)


def _binary_cross_entropy(logits: jax.Array, x: jax.Array) -> jax.Array:
    """Elementwise softplus(l) - x * l, with ``jax.nn.softplus`` (log(1 + e^l), stable at any |l|).

    One exp and one log1p per pixel: ``optax.sigmoid_binary_cross_entropy`` evaluates
    log_sigmoid(l) and log_sigmoid(-l), two of each, which XLA does not merge (the MLP VAE's epoch
    ran a few percent faster with this form; docs/benchmarks.md).
    Its gradient is sigmoid(l) - x everywhere, l = 0 included (tested).
    """
    return jax.nn.softplus(logits) - x * logits


def gaussian_nll(x: jax.Array, mean: jax.Array, logvar: jax.Array | float, event_ndim: int = 3) -> jax.Array:
    """-log N(x; mean, diag(exp(logvar))), in nats.

    -log p = 1/2 * sum (log 2pi + logvar + (x - mean)^2 / exp(logvar)).
    The lecture's decoder N(f(z), cI) is ``logvar = log c``: up to a constant
    the loss is ||x - f(z)||^2 / (2c), so squared error is the c-scaled
    special case.

    ``x`` (e.g. ``[B, H, W, C]``) and ``mean`` of the same shape; ``logvar`` an array broadcastable
    to ``x`` or a float. Returns ``[B]`` (the leading axes): one value per example.
    """
    _check_pair("gaussian_nll", ("x", "mean"), x, mean)
    _check_event("gaussian_nll", "x", x, event_ndim)
    _check_event("gaussian_nll", "mean", mean, event_ndim)
    logvar = jnp.broadcast_to(jnp.asarray(logvar, x.dtype), jnp.shape(x))
    nll = 0.5 * (LOG_2PI + logvar + jnp.square(x - mean) * jnp.exp(-logvar))
    return _sum_event(nll, event_ndim)


def gaussian_log_prob(z: jax.Array, mean: jax.Array, logvar: jax.Array, event_ndim: int = 1) -> jax.Array:
    """log N(z; mean, diag(exp(logvar))) summed over the event, ``[...]``."""
    return -gaussian_nll(z, mean, logvar, event_ndim=event_ndim)


def standard_normal_log_prob(z: jax.Array, event_ndim: int = 1) -> jax.Array:
    """log N(z; 0, I) summed over the event, ``[...]``."""
    return -_sum_event(0.5 * (LOG_2PI + jnp.square(z)), event_ndim)


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """Draws z = mean + exp(logvar / 2) * eps with eps ~ N(0, I) from ``key``.

    The reparameterization trick (Kingma & Welling 2014, section 2.4): the
    sample is a differentiable function of (mean, logvar); all randomness is in
    the explicit key, so the same key gives the same z. ``eps`` is drawn in at
    least float32 and then cast to the dtype of ``mean``: a bfloat16 model gets
    the float32 draw rounded, the same noise that float32 training sees.

    Returns ``z`` with the shape and dtype of ``mean``.
    """
    return mean + jnp.exp(0.5 * logvar) * standard_normal(key, jnp.shape(mean), jnp.result_type(mean))


def standard_normal(key: jax.Array, shape, dtype) -> jax.Array:
    """N(0, I) draws of ``shape`` in ``dtype``, drawn in at least float32 (see :func:`reparameterize`)."""
    return jax.random.normal(key, shape, jnp.promote_types(dtype, jnp.float32)).astype(dtype)


def log_mean_exp(log_w: jax.Array, axis: int = -1) -> jax.Array:
    """log(mean(exp(log_w), axis)) computed stably with logsumexp."""
    n = log_w.shape[axis]
    return jax.nn.logsumexp(log_w, axis=axis) - math.log(n)


def vae_log_weights(log_px_given_z: jax.Array, z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """Importance log-weights log p(x|z) + log p(z) - log q(z|x).

    ``log_px_given_z`` ``[...]`` for the samples ``z`` ``[..., D]`` of q(z|x) = N(mean, exp(logvar))
    (``[..., D]``, broadcast against z) -> ``[...]`` log-weights, one per sample.
    """
    return log_px_given_z + standard_normal_log_prob(z) - gaussian_log_prob(z, mean, logvar)


def iwae_bound(log_w: jax.Array, axis: int = -1) -> jax.Array:
    """The importance-weighted bound L_k = log (1/k) sum_j w_j (Burda et al. 2016).

    ``log_w`` holds k log-weights log p(x, z_j) - log q(z_j | x) with
    z_j ~ q(z|x) along ``axis``. L_1 is the ELBO; L_k increases with k and
    tends to log p(x), so -L_k is an upper bound on the negative
    log-likelihood that tightens as k grows.

    Returns the bound with ``axis`` removed, one value per example.
    """
    return log_mean_exp(log_w, axis=axis)


# --- autoencoder reconstruction losses and image-quality metrics ----------------------
# A reconstruction ``x_hat`` (an image in [0, 1]) or decoder logits against the clean input ``x``.


def _event_size(values: jax.Array, event_ndim: int) -> int:
    """Number of elements in one event (H * W * C for NHWC images)."""
    return math.prod(values.shape[axis] for axis in _event_axes(values, event_ndim))


def squared_error(x_hat: jax.Array, x: jax.Array, event_ndim: int = 3) -> jax.Array:
    """Sum of squared errors over the event: ||x - x_hat||^2.

    The lectures' reconstruction loss ``||x - d(e(x))||^2``, and, up to the
    factor ``1 / (2c)`` and a constant, the Gaussian NLL of :func:`gaussian_nll`.

    Returns ``[B]`` (the leading axes): one value per example.
    """
    _check_pair("squared_error", ("x_hat", "x"), x_hat, x)
    _check_event("squared_error", "x", x, event_ndim)
    return _sum_event(jnp.square(x - x_hat), event_ndim)


def half_mean_squared_error(x_hat: jax.Array, x: jax.Array, event_ndim: int = 3) -> jax.Array:
    """The lecture's mean form of the MSE: ``1/(2wh) * sum_ij (x_ij - x_hat_ij)^2``.

    For a one-channel ``h x w`` image the divisor is ``2wh``; for C channels
    every element counts, so it is ``2whC``. It equals
    ``squared_error / (2 * event size)`` and half of :func:`mean_squared_error`;
    the factor 1/2 only makes the gradient ``(x_hat - x) / (wh)``. Returns ``[B]``.
    """
    return squared_error(x_hat, x, event_ndim) / (2.0 * _event_size(x, event_ndim))


def mean_squared_error(x_hat: jax.Array, x: jax.Array, event_ndim: int = 3) -> jax.Array:
    """Mean of the squared error over the event's elements (the MSE in PSNR), ``[B]``."""
    return squared_error(x_hat, x, event_ndim) / _event_size(x, event_ndim)


def masked_squared_error(x_hat: jax.Array, x: jax.Array, mask: jax.Array, event_ndim: int = 3) -> jax.Array:
    """``sum mask * (x - x_hat)^2`` over the event, ``[B]``.

    ``mask`` (1 = counted, 0 = ignored; fractional weights allowed) broadcasts
    against ``x``, e.g. ``[B, H, W, 1]`` for a per-pixel mask of ``[B, H, W, C]``
    images. With ``mask = 1`` it is :func:`squared_error`.
    """
    mask = jnp.broadcast_to(mask, jnp.shape(x)).astype(jnp.result_type(x))
    return _sum_event(mask * jnp.square(x - x_hat), event_ndim)


def masked_mean_squared_error(x_hat: jax.Array, x: jax.Array, mask: jax.Array, event_ndim: int = 3) -> jax.Array:
    """Mean squared error over the masked elements only: ``sum m (x - x_hat)^2 / sum m``.

    An example with an empty mask gets 0 (nothing to compare), not NaN. Returns ``[B]``.
    """
    mask = jnp.broadcast_to(mask, jnp.shape(x)).astype(jnp.result_type(x))
    count = _sum_event(mask, event_ndim)
    return jnp.where(count > 0, masked_squared_error(x_hat, x, mask, event_ndim) / jnp.maximum(count, 1e-12), 0.0)


def masked_bernoulli_nll(logits: jax.Array, x: jax.Array, mask: jax.Array, event_ndim: int = 3) -> jax.Array:
    """Binary cross-entropy summed over the masked elements only, ``[B]``.

    ``sum mask * (softplus(l) - x * l)``: :func:`bernoulli_nll` restricted to
    the pixels where ``mask`` (broadcast against ``x``) is 1.
    """
    mask = jnp.broadcast_to(mask, jnp.shape(x)).astype(jnp.result_type(x))
    return _sum_event(mask * _binary_cross_entropy(logits, x), event_ndim)


# The smallest MSE used in PSNR, so a perfect reconstruction reads 100 dB (for max_value 1), not infinity.
PSNR_MIN_MSE = 1e-10


def psnr_from_mse(mse: jax.Array, max_value: float = 1.0) -> jax.Array:
    """Peak signal-to-noise ratio in dB: ``10 log10(max_value^2 / mse)``, elementwise.

    ``mse`` is a per-example mean squared error (:func:`mean_squared_error`
    or, for a region, :func:`masked_mean_squared_error`); it is clipped below
    at ``PSNR_MIN_MSE`` so identical images give a finite value.
    """
    return 10.0 * jnp.log10(max_value**2 / jnp.maximum(mse, PSNR_MIN_MSE))


def psnr(x_hat: jax.Array, x: jax.Array, max_value: float = 1.0, event_ndim: int = 3) -> jax.Array:
    """PSNR of ``x_hat`` against the reference ``x`` in dB, one value per example ``[B]``.

    ``10 log10(max_value^2 / MSE)`` with the MSE averaged over the event (``max_value`` 1 for images
    in [0, 1]). Higher is better; +6 dB is about half the RMS error.
    """
    return psnr_from_mse(mean_squared_error(x_hat, x, event_ndim), max_value)
