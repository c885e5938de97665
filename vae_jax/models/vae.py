"""The MLP variational autoencoder (Kingma & Welling 2014), as flax.linen modules.

The default is the classic 784-400-20 model: one hidden layer of 400 ReLU
units in the encoder and in the decoder, a 20-dimensional Gaussian latent.
Params are plain pytrees, so ``model.apply`` is a pure function that can be
jitted, differentiated and vmapped over seeds.

Using it in your own code::

    model = VAE(latent_dim=20)
    variables = init_variables(model, jax.random.key(0))   # {"params": ...}
    logits, mean, logvar, z = model.apply(variables, x, sample_key)
    neg_elbo = losses.neg_elbo(losses.bernoulli_nll(logits, x), losses.gaussian_kl(mean, logvar))  # [B]

``model.apply`` takes flax's variables dict ``{"params": params}``, not the
bare params tree: pass ``init_variables(...)``, or wrap the tree from
:func:`init_params` as ``{"params": params}`` (what an optimizer updates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses, objectives
from vae_jax.models.layers import Dense, float32_or_wider


class MLPEncoder(nn.Module):
    """The Gaussian encoder q(z|x): x ``[B, H, W, C]`` -> (mean, logvar), each ``[B, latent_dim]``.

    The image is flattened and passed through ReLU layers of widths ``hidden``;
    two linear heads give the posterior mean and log-variance.
    """

    hidden: Sequence[int]
    latent_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            h = nn.relu(Dense(width)(h))
        mean = Dense(self.latent_dim, name="mean")(h)
        logvar = Dense(self.latent_dim, name="logvar")(h)
        return mean, logvar


class MLPDecoder(nn.Module):
    """The decoder: z ``[B, latent_dim]`` -> one unconstrained output per pixel, ``[B, *image_shape]``.

    The output is read as logits: the Bernoulli probabilities, or the Gaussian mean, are
    sigmoid(output) (:func:`vae_jax.objectives.decoder_mean`).
    """

    hidden: Sequence[int]
    image_shape: Sequence[int]

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = z
        for width in self.hidden:
            h = nn.relu(Dense(width)(h))
        out = Dense(math.prod(self.image_shape), name="out")(h)
        return out.reshape(z.shape[0], *self.image_shape)


class SharedLogVariance(nn.Module):
    """Appends one learned log-variance, shared by every pixel and image, as C extra channels.

    ``[B, H, W, C]`` mean logits -> ``[B, H, W, 2C]`` (the sigma-VAE of Rybkin et al. 2021).
    """

    @nn.compact
    def __call__(self, mean_logits: jax.Array) -> jax.Array:
        logvar = self.param("decoder_logvar", nn.initializers.zeros, ())
        # Broadcast in (at least) float32: the parameter's gradient is a sum over every pixel of every image,
        # which in bfloat16 stops growing after a few hundred terms (4 instead of 288 at batch 128, on CPU).
        wide = float32_or_wider(mean_logits.dtype)
        return jnp.concatenate(
            [mean_logits.astype(wide), jnp.broadcast_to(logvar.astype(wide), mean_logits.shape)], axis=-1
        )


def decoder_head(likelihood: str, image_channels: int) -> tuple[int, SharedLogVariance | None]:
    """The decoder-channel rule of every Gaussian VAE: (channels the decoder network outputs, appended variance).

    With a learned variance (:data:`vae_jax.objectives.LEARNED_VARIANCE`) the output holds 2C channels:
    a per-pixel variance is C more network channels, a shared one is appended (:class:`SharedLogVariance`).
    """
    if likelihood not in objectives.LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {objectives.LIKELIHOODS}, got {likelihood!r}")
    network_channels = 2 * image_channels if likelihood == "gaussian_pixel_var" else image_channels
    return network_channels, SharedLogVariance() if likelihood == "gaussian_shared_var" else None


def make_mlp_decoder(hidden: Sequence[int], image_shape: Sequence[int], likelihood: str):
    """``(MLPDecoder, SharedLogVariance or None)`` for ``likelihood`` (:func:`decoder_head`): it mirrors ``hidden``."""
    *spatial, channels = image_shape
    network_channels, shared_logvar = decoder_head(likelihood, channels)
    return MLPDecoder(tuple(reversed(tuple(hidden))), (*spatial, network_channels)), shared_logvar


class GaussianVAE(nn.Module):
    """The core every Gaussian VAE shares: q(z|x) = N(mean, diag(exp(logvar))), p(z) = N(0, I).

    A family's ``setup`` defines ``encoder`` (-> mean, logvar), ``decoder`` and
    ``shared_logvar`` (:func:`decoder_head`); the MLP, convolutional,
    conditional and hierarchical VAEs differ only there (the conditional VAE
    also feeds its label to both networks: ``conditions`` names the batch
    entries, after ``x``, that :meth:`encode` and :meth:`decode` take).
    The objectives of :mod:`vae_jax.objectives` use only :meth:`encode`,
    :meth:`decode` and ``__call__``.
    """

    conditions: ClassVar[tuple[str, ...]] = ()  # batch entries (after "x") that encode and decode take

    def __call__(self, x: jax.Array, *conditions_and_key: jax.Array):
        """Encodes ``x`` ``[B, H, W, C]``, draws one z per example with the reparameterization trick, decodes it.

        ``conditions_and_key``: the arrays named by ``conditions`` (``[B]`` each), then the PRNG key
        for z = mean + exp(logvar / 2) * eps. Returns ``(decoder output [B, H, W, C or 2C], mean [B, D],
        logvar [B, D], z [B, D])``.
        """
        *conditions, key = conditions_and_key
        mean, logvar = self.encode(x, *conditions)
        z = losses.reparameterize(key, mean, logvar)
        return self.decode(z, *conditions), mean, logvar, z

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z|x): x ``[B, H, W, C]`` -> ``(mean [B, D], logvar [B, D])``; ``method=model.encode`` in ``apply``."""
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        """z ``[B, D]`` -> output ``[B, H, W, C]`` (2C with a learned variance), the first C logits of E[x|z].

        Call as ``model.apply(variables, z, method=model.decode)``.
        """
        return self.with_variance(self.decoder(z))

    def with_variance(self, out: jax.Array) -> jax.Array:
        """The decoder output with the shared learned log-variance appended (unchanged for other likelihoods)."""
        return out if self.shared_logvar is None else self.shared_logvar(out)


class VAE(GaussianVAE):
    """MLP VAE: :class:`MLPEncoder`, :class:`MLPDecoder` (hidden widths mirrored) and the :class:`GaussianVAE` core.

    The decoder outputs logits, E[x|z] = sigmoid(logits), under every likelihood. The only
    likelihood the model itself needs to know is a learned decoder variance (``likelihood`` in
    :data:`vae_jax.objectives.LEARNED_VARIANCE`): then the output has 2C channels, mean logits
    then log-variances (a per-pixel map, or one shared learned scalar). ``latent_dim`` is D, the
    size of z; ``image_shape`` ``(H, W, C)`` is that of one image (inputs are ``[B, H, W, C]``).
    """

    latent_dim: int = 20
    hidden: Sequence[int] = (400,)
    image_shape: Sequence[int] = (28, 28, 1)
    likelihood: str = "bernoulli"

    def setup(self):
        self.encoder = MLPEncoder(tuple(self.hidden), self.latent_dim)
        self.decoder, self.shared_logvar = make_mlp_decoder(self.hidden, self.image_shape, self.likelihood)


def init_variables(model: GaussianVAE, key: jax.Array) -> dict:
    """Initial flax variables ``{"params": params}`` for ``model``, ready for ``model.apply(variables, ...)``.

    Only shapes are needed (no data): the model is traced once on zeros (and
    label 0 for each of ``model.conditions``). Every Gaussian VAE family
    (MLP, conv, conditional, hierarchical) is initialised by this.
    """
    x = jnp.zeros((1, *model.image_shape), jnp.float32)
    conditions = [jnp.zeros((1,), jnp.int32) for _ in model.conditions]
    return {"params": model.init(key, x, *conditions, jax.random.key(0))["params"]}


def init_params(model: GaussianVAE, key: jax.Array) -> dict:
    """Initial params for ``model``: the bare params tree (what an optimizer updates).

    ``model.apply`` wants them wrapped: ``model.apply({"params": params}, x, key)``.
    """
    return init_variables(model, key)["params"]
