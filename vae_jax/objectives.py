"""Training objectives: a model plus the pure losses -> ``loss_fn(params, batch, key, step)``.

A ``loss_fn`` returns ``(scalar loss, metrics)``: the batch mean of a
per-example loss, and a dict of batch-mean scalars for logging. It is what
:func:`vae_jax.train.make_train_step` differentiates.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vae_jax import losses

LIKELIHOODS = ("bernoulli", "gaussian")

LossFn = Callable[[dict, dict, jax.Array, jax.Array], tuple[jax.Array, dict]]


def reconstruction_nll(
    likelihood: str, decoder_out: jax.Array, x: jax.Array, decoder_logvar: float = 0.0
) -> jax.Array:
    """-log p(x|z) per example for the decoder output.

    ``bernoulli``: the decoder output is per-pixel logits. ``gaussian``: the
    decoder output passed through a sigmoid is the mean of N(mean, c I) with
    ``log c = decoder_logvar`` (the lecture's fixed-variance decoder).
    """
    if likelihood == "bernoulli":
        return losses.bernoulli_nll(decoder_out, x)
    if likelihood == "gaussian":
        return losses.gaussian_nll(x, jax.nn.sigmoid(decoder_out), decoder_logvar)
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def decoder_mean(decoder_out: jax.Array) -> jax.Array:
    """The image a decoder output stands for: E[x|z] in [0, 1] for both likelihoods."""
    return jax.nn.sigmoid(decoder_out)


def vae_terms(model, params, x: jax.Array, key: jax.Array, likelihood: str, decoder_logvar: float):
    """Per-example (reconstruction NLL, KL) ``[B]`` each, with one z sample per example."""
    decoder_out, mean, logvar, _ = model.apply({"params": params}, x, key)
    recon = reconstruction_nll(likelihood, decoder_out, x, decoder_logvar)
    kl = losses.gaussian_kl(mean, logvar)
    return recon, kl


def binarize_batch(key: jax.Array, x: jax.Array, dynamic: bool) -> tuple[jax.Array, jax.Array]:
    """Splits ``key`` in two; with ``dynamic``, Bernoulli-samples ``x`` from its gray values with the first.

    Returns ``(x, key)``: the (possibly binarized) batch and the second key for the rest of the step.
    """
    binarize_key, rest_key = jax.random.split(key)
    if dynamic:
        x = jax.random.bernoulli(binarize_key, x).astype(x.dtype)
    return x, rest_key


def make_vae_loss(
    model,
    likelihood: str = "bernoulli",
    beta: float = 1.0,
    decoder_logvar: float = 0.0,
    dynamic_binarize: bool = False,
) -> LossFn:
    """The negative ELBO, recon + beta * KL, averaged over the batch.

    ``beta = 1`` is the VAE of Kingma & Welling (2014); ``beta > 1`` the
    beta-VAE of Higgins et al. (2017). With ``dynamic_binarize`` the batch is
    Bernoulli-sampled from its gray values with a key split from ``key``.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")

    def loss_fn(params, batch, key, step):
        del step  # a constant beta
        x, sample_key = binarize_batch(key, batch["x"], dynamic_binarize)
        recon, kl = vae_terms(model, params, x, sample_key, likelihood, decoder_logvar)
        loss = jnp.mean(recon + beta * kl)
        return loss, {"loss": loss, "recon": jnp.mean(recon), "kl": jnp.mean(kl)}

    return loss_fn


def make_vae_eval(model, likelihood: str = "bernoulli", decoder_logvar: float = 0.0):
    """``eval_fn(params, batch, key) -> dict of [B] per-example metrics`` (beta = 1)."""

    def eval_fn(params, batch, key):
        recon, kl = vae_terms(model, params, batch["x"], key, likelihood, decoder_logvar)
        return {"neg_elbo": recon + kl, "recon": recon, "kl": kl}

    return eval_fn
