"""The MLP variational autoencoder (Kingma & Welling 2014), as flax.linen modules.

The default is the classic 784-400-20 model: one hidden layer of 400 ReLU
units in the encoder and in the decoder, a 20-dimensional Gaussian latent.
Params are plain pytrees, so ``model.apply`` is a pure function that can be
jitted, differentiated and vmapped over seeds.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses


class MLPEncoder(nn.Module):
    """x ``[B, H, W, C]`` -> (mean, logvar), each ``[B, latent_dim]``."""

    hidden: Sequence[int]
    latent_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        mean = nn.Dense(self.latent_dim, name="mean")(h)
        logvar = nn.Dense(self.latent_dim, name="logvar")(h)
        return mean, logvar


class MLPDecoder(nn.Module):
    """z ``[B, latent_dim]`` -> pixel logits (or means) ``[B, *image_shape]``."""

    hidden: Sequence[int]
    image_shape: Sequence[int]

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = z
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        out = nn.Dense(math.prod(self.image_shape), name="out")(h)
        return out.reshape(z.shape[0], *self.image_shape)


class SharedLogVariance(nn.Module):
    """Appends one learned log-variance, shared by every pixel and image, as C extra channels.

    ``[B, H, W, C]`` mean logits -> ``[B, H, W, 2C]``: the layout of the
    learned-variance likelihoods in :mod:`vae_jax.objectives` (the sigma-VAE
    of Rybkin et al. 2021, with sigma a single learned parameter).
    """

    @nn.compact
    def __call__(self, mean_logits: jax.Array) -> jax.Array:
        logvar = self.param("decoder_logvar", nn.initializers.zeros, ())
        return jnp.concatenate([mean_logits, jnp.broadcast_to(logvar, mean_logits.shape)], axis=-1)


class VAE(nn.Module):
    """MLP VAE: q(z|x) = N(mean(x), diag(exp(logvar(x)))), p(z) = N(0, I).

    The decoder returns per-pixel logits of p(x|z) for a Bernoulli likelihood,
    or per-pixel mean logits for a Gaussian one (the mean is their sigmoid).
    Its hidden layers mirror the encoder's in reverse order. With a learned
    decoder variance (``likelihood`` of :data:`vae_jax.objectives.LEARNED_VARIANCE`)
    the output has 2C channels: mean logits, then log-variances (a per-pixel
    map, or one shared learned scalar).
    """

    latent_dim: int = 20
    hidden: Sequence[int] = (400,)
    image_shape: Sequence[int] = (28, 28, 1)
    likelihood: str = "bernoulli"

    def setup(self):
        *spatial, channels = self.image_shape
        out_shape = (*spatial, channels * (2 if self.likelihood == "gaussian_pixel_var" else 1))
        self.encoder = MLPEncoder(tuple(self.hidden), self.latent_dim)
        self.decoder = MLPDecoder(tuple(reversed(self.hidden)), out_shape)
        self.shared_logvar = SharedLogVariance() if self.likelihood == "gaussian_shared_var" else None

    def __call__(self, x: jax.Array, key: jax.Array):
        """Returns (decoder output ``[B, H, W, C]``, mean, logvar, z)."""
        mean, logvar = self.encoder(x)
        z = losses.reparameterize(key, mean, logvar)
        return self.decode(z), mean, logvar, z

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        out = self.decoder(z)
        return out if self.shared_logvar is None else self.shared_logvar(out)


def init_params(model: VAE, key: jax.Array) -> dict:
    """Initial params for ``model`` from ``key`` (shapes only; no data needed)."""
    x = jnp.zeros((1, *model.image_shape), jnp.float32)
    return model.init(key, x, jax.random.key(0))["params"]
