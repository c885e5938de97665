"""The conditional VAE (Sohn, Lee & Yan 2015; the lectures' CVAE), as flax.linen modules.

A class label y enters both networks as a one-hot vector:

    q(z | x, y) = N(mean(x, y), diag(exp(logvar(x, y))))     encoder on [flatten(x), onehot(y)]
    p(x | z, y)                                               decoder on [z, onehot(y)]
    p(z)        = N(0, I)                                     the prior does not depend on y

so the ELBO of log p(x | y) is E_q[log p(x|z,y)] - KL(q(z|x,y) || N(0, I)), the
plain VAE's with every distribution conditioned on y. Sampling for a requested
class decodes z ~ N(0, I) together with that class's one-hot vector: z is left
to carry what the label does not say (slant, thickness, style).

The networks are the MLPs of :mod:`vae_jax.models.vae`. Reference: Sohn, Lee & Yan,
"Learning Structured Output Representation using Deep Conditional Generative Models", NeurIPS 2015.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp

from vae_jax.models.vae import GaussianVAE, MLPEncoder, make_mlp_decoder


class CVAE(GaussianVAE):
    """MLP conditional VAE: q(z|x,y), p(x|z,y), p(z) = N(0, I), y one-hot of ``num_classes``.

    The :class:`~vae_jax.models.vae.GaussianVAE` core with the label as its
    one condition: ``__call__(x, y, key)``, ``encode(x, y)``, ``decode(z, y)``.

    The other attributes are those of :class:`~vae_jax.models.vae.VAE`; ``num_classes`` is K.
    """

    latent_dim: int = 20
    hidden: Sequence[int] = (400,)
    image_shape: Sequence[int] = (28, 28, 1)
    num_classes: int = 10
    likelihood: str = "bernoulli"
    conditions: ClassVar[tuple[str, ...]] = ("y",)

    def setup(self):
        self.encoder = MLPEncoder(tuple(self.hidden), self.latent_dim)
        self.decoder, self.shared_logvar = make_mlp_decoder(self.hidden, self.image_shape, self.likelihood)

    def one_hot(self, y: jax.Array, dtype=jnp.float32) -> jax.Array:
        """``[B]`` int labels -> ``[B, K]`` one-hot vectors in ``dtype`` (that of the input they join)."""
        return jax.nn.one_hot(y, self.num_classes, dtype=dtype)

    def encode(self, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z|x,y): images ``[B, H, W, C]`` and labels ``[B]`` -> (mean, logvar), each ``[B, D]``."""
        h = jnp.concatenate([x.reshape(x.shape[0], -1), self.one_hot(y, x.dtype)], axis=-1)
        return self.encoder(h)

    def decode(self, z: jax.Array, y: jax.Array) -> jax.Array:
        """p(x|z,y): ``z`` ``[B, D]`` and labels ``[B]`` -> decoder output (logits) ``[B, H, W, C or 2C]``."""
        return self.with_variance(self.decoder(jnp.concatenate([z, self.one_hot(y, z.dtype)], axis=-1)))
