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


class VAE(nn.Module):
    """MLP VAE: q(z|x) = N(mean(x), diag(exp(logvar(x)))), p(z) = N(0, I).

    The decoder returns per-pixel logits of p(x|z) for a Bernoulli likelihood,
    or per-pixel means for a Gaussian one. Its hidden layers mirror the
    encoder's in reverse order.
    """

    latent_dim: int = 20
    hidden: Sequence[int] = (400,)
    image_shape: Sequence[int] = (28, 28, 1)

    def setup(self):
        self.encoder = MLPEncoder(tuple(self.hidden), self.latent_dim)
        self.decoder = MLPDecoder(tuple(reversed(self.hidden)), tuple(self.image_shape))

    def __call__(self, x: jax.Array, key: jax.Array):
        """Returns (decoder output ``[B, H, W, C]``, mean, logvar, z)."""
        mean, logvar = self.encoder(x)
        z = losses.reparameterize(key, mean, logvar)
        return self.decoder(z), mean, logvar, z

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)


def init_params(model: VAE, key: jax.Array) -> dict:
    """Initial params for ``model`` from ``key`` (shapes only; no data needed)."""
    x = jnp.zeros((1, *model.image_shape), jnp.float32)
    return model.init(key, x, jax.random.key(0))["params"]
