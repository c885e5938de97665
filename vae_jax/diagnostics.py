"""Posterior-collapse diagnostics of a VAE: KL per latent dimension, active units, I(x; z) under q.

A VAE whose decoder can model x without z can reach a good ELBO with q(z|x) = p(z) for every x
("posterior collapse", Bowman et al. 2016). Three views of it, on held-out images from host arrays:

* the mean KL per latent dimension, E_x KL(q(z_d|x) || p(z_d)) (nats): near 0, the dimension is unused;
* active units (Burda et al. 2016): Var_x E_q[z_d] > 0.01 (:func:`vae_jax.evaluate.active_units`);
* the mutual information I(x; z) under the encoder's joint q(x, z) = p_data(x) q(z|x) (He et al. 2019):

      I_q(x; z) = E_x E_{z~q(z|x)} [log q(z|x) - log q(z)],
      q(z) = E_x q(z|x) ~= (1/N) sum_n q(z|x_n),

  with q(z) estimated from the N test posteriors: 0 for a collapsed posterior, never more than log N
  (it cannot tell more than N inputs apart), so use many test images.

References:
  Hoffman & Johnson, "ELBO surgery", NeurIPS 2016 AABI workshop.
  He, Spokoyny, Neubig & Berg-Kirkpatrick, "Lagging Inference Networks and
  Posterior Collapse in Variational Autoencoders", ICLR 2019.
  Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import compiling, evaluate, losses
from vae_jax.arrays import apply_in_batches

# A dimension whose mean KL is below this (nats) counts as collapsed in the summary.
COLLAPSED_KL_NATS = 0.01


def aggregate_log_density(z: jax.Array, means: jax.Array, logvars: jax.Array, chunk: int = 1024) -> jax.Array:
    """log q(z) = log (1/N) sum_n N(z; means_n, diag(exp(logvars_n))) ``[M]`` for each row of ``z`` ``[M, D]``.

    ``means``, ``logvars``: ``[N, D]``, the mixture's N posteriors; ``chunk``: rows of ``z`` at once
    (memory ``chunk * N``).
    """
    m = z.shape[0]
    pad = (-m) % chunk
    z_chunks = jnp.pad(z, ((0, pad), (0, 0))).reshape(-1, chunk, z.shape[1])

    # log N(z; mean_n, diag(var_n)) = const_n - 1/2 (z^2 . 1/var_n - 2 z . mean_n/var_n): two matrix products
    # instead of a [chunk, N, D] broadcast, so the O(M N D) work runs at matrix-multiply speed.
    inv_var = jnp.exp(-logvars)  # [N, D]
    const = -0.5 * (jnp.sum(means**2 * inv_var + logvars, axis=1) + means.shape[1] * math.log(2 * math.pi))
    highest = jax.lax.Precision.HIGHEST

    def one_chunk(zc):  # [chunk, D] -> [chunk]
        quad = jnp.dot(zc**2, inv_var.T, precision=highest) - 2.0 * jnp.dot(zc, (means * inv_var).T, precision=highest)
        return losses.log_mean_exp(const[None] - 0.5 * quad, axis=1)  # over the N posteriors

    return jax.lax.map(one_chunk, z_chunks).reshape(-1)[:m]


@compiling.jit_run_once(static_argnums=2)
def _mutual_information(key, i, num_samples: int, means, logvars):
    key = jax.random.split(key, num_samples)[i]  # draw i's key, split in the program (no eager compile)
    z = losses.reparameterize(key, means, logvars)  # [N, D]: one z ~ q(z|x_n) per image
    log_q_z_given_x = losses.gaussian_log_prob(z, means, logvars)  # [N]
    return jnp.mean(log_q_z_given_x - aggregate_log_density(z, means, logvars))


def mutual_information(
    posterior_means: np.ndarray, posterior_logvars: np.ndarray, key: jax.Array, num_samples: int = 1
) -> float:
    """Monte Carlo estimate of I_q(x; z) in nats from N posteriors q(z|x_n) = N(mean_n, diag(exp(logvar_n))).

    E_n [log q(z_n|x_n) - log (1/N) sum_m q(z_n|x_m)] with z_n ~ q(z|x_n) (``[N, D]`` means and logvars),
    averaged over ``num_samples`` draws per image (keys split from ``key``); in [0, log N] up to noise.
    """
    means = jnp.asarray(posterior_means, jnp.float32)
    logvars = jnp.asarray(posterior_logvars, jnp.float32)
    values = [float(_mutual_information(key, i, num_samples, means, logvars)) for i in range(num_samples)]
    return float(np.mean(values))


def collapse_diagnostics(
    posterior_means: np.ndarray,
    posterior_logvars: np.ndarray,
    key: jax.Array,
    kl_per_dim: np.ndarray | None = None,
    active_threshold: float = 0.01,
) -> dict:
    """The collapse diagnostics of one latent layer, as a JSON-ready dict for ``summary.json``.

    Args:
      posterior_means, posterior_logvars: ``[N, D]`` q(z|x) of N held-out images.
      key: PRNG key for the mutual-information estimate.
      kl_per_dim: ``[N, D]`` KL terms when not the closed form against N(0, I) (e.g. a learned prior);
        by default :func:`vae_jax.losses.gaussian_kl` per dimension (float32, averaged in float64).
      active_threshold: the active-unit threshold on Var_x E_q[z_d].

    Returns:
      ``mean_kl_per_dim`` [D] (nats), ``kl_total`` (their sum), ``collapsed_dims`` (mean KL < 0.01 nats),
      ``active_units``, ``posterior_mean_variance`` [D], ``mutual_information`` (nats) with its ceiling
      ``mutual_information_max`` = log N, ``latent_dim`` and ``n``.
    """
    if kl_per_dim is None:
        kl_per_dim = losses.gaussian_kl(jnp.asarray(posterior_means), jnp.asarray(posterior_logvars), event_ndim=0)
    kl = np.asarray(kl_per_dim, np.float64)
    mean_kl = kl.mean(axis=0)
    count, variance = evaluate.active_units(np.asarray(posterior_means), active_threshold)
    n = int(posterior_means.shape[0])
    return {
        "n": n,
        "latent_dim": int(posterior_means.shape[1]),
        "mean_kl_per_dim": [float(v) for v in mean_kl],
        "kl_total": float(mean_kl.sum()),
        "collapsed_dims": int(np.sum(mean_kl < COLLAPSED_KL_NATS)),
        "active_units": int(count),
        "active_units_threshold": active_threshold,
        "posterior_mean_variance": [float(v) for v in variance],
        "mutual_information": mutual_information(posterior_means, posterior_logvars, key),
        "mutual_information_max": math.log(n),
    }


def _posterior_moments(model, params, x, *conditions):
    return jnp.concatenate(model.apply({"params": params}, x, *conditions, method=model.encode), -1)


def encode_posteriors(model, params, x: np.ndarray, *conditions: np.ndarray, batch_size: int = 500):
    """(means, logvars) ``[N, D]`` each of a model with ``encode(x, *conditions) -> (mean, logvar)``.

    The MLP, conv and conditional VAEs (``conditions``: the CVAE's labels ``[N]``) and an HVAE's q(z1|x).
    """
    both = apply_in_batches(_posterior_moments, model, params, x, *conditions, batch_size=batch_size)
    d = both.shape[1] // 2
    return both[:, :d], both[:, d:]


def vae_collapse_diagnostics(model, params, x: np.ndarray, key: jax.Array) -> dict:
    """:func:`collapse_diagnostics` of a one-level Gaussian VAE on the images ``x`` ``[N, H, W, C]``."""
    means, logvars = encode_posteriors(model, params, x)
    return collapse_diagnostics(means, logvars, key)
