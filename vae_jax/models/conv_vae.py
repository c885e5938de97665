"""The convolutional VAE, for 28x28 digits up to 128x128 colour images, as flax.linen modules.

Encoder: ``len(channels)`` stride-2 convolutions (kernel ``kernel_size``,
'SAME' padding, ReLU), each halving the image, -> a flat vector (optionally
one more ReLU Dense layer of ``hidden`` units) -> two linear heads for the mean
and log-variance of q(z|x). Decoder: the mirror image, a linear layer from z up
to the flat vector (through ``hidden`` if set), then stride-2 transposed
convolutions back to the image; the last one outputs the likelihood's channels.

The layers are XLA's convolutions (``vae_jax.models.layers.Conv``/``ConvTranspose``,
whose bias gradients stay float32 under ``--precision bf16``): the from-the-definition
``Conv2d``/``ConvTranspose2d`` are too slow and memory-hungry for 128x128 images.

The lecture's face model (``7.2.Conv_VAE``): 128x128x3 images, an encoder to a
1024-vector, ``fc1``/``fc2`` 1024 -> 64 for the mean and log-variance, ``fc3``
64 -> 1024, transposed convolutions back to 128x128x3. The notes give only
these shapes; :data:`FACES128` reaches them with six stride-2 convolutions
(128 -> 2, with 256 channels: 2 * 2 * 256 = 1024) and no hidden layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax

from vae_jax.models.layers import Conv, ConvTranspose, Dense
from vae_jax.models.vae import GaussianVAE, decoder_head

# The lecture's 128x128x3 face model: 128 -> 64 -> 32 -> 16 -> 8 -> 4 -> 2 spatially.
FACES128 = {"image_shape": (128, 128, 3), "channels": (32, 32, 64, 64, 128, 256), "hidden": 0, "latent_dim": 64}


def bottleneck_shape(image_shape: Sequence[int], channels: Sequence[int]) -> tuple[int, int, int]:
    """The encoder's last feature map ``(h, w, c)``: the image halved once per convolution."""
    h, w, _ = image_shape
    for _ in channels:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w, channels[-1]


class ConvEncoder(nn.Module):
    """x ``[B, H, W, C]`` -> (mean, logvar), each ``[B, latent_dim]``."""

    channels: Sequence[int]
    latent_dim: int
    hidden: int = 0
    kernel_size: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x
        for i, c in enumerate(self.channels):
            h = nn.relu(Conv(c, (self.kernel_size, self.kernel_size), strides=2, padding="SAME", name=f"conv_{i}")(h))
        h = h.reshape(h.shape[0], -1)  # [B, h * w * c]: the flat vector (1024 for the faces preset)
        if self.hidden:
            h = nn.relu(Dense(self.hidden, name="hidden")(h))
        mean = Dense(self.latent_dim, name="fc1")(h)
        logvar = Dense(self.latent_dim, name="fc2")(h)
        return mean, logvar


class ConvDecoder(nn.Module):
    """z ``[B, latent_dim]`` -> decoder output ``[B, H, W, out_channels]``."""

    channels: Sequence[int]  # the encoder's channels, in encoder order
    image_shape: Sequence[int]
    out_channels: int
    hidden: int = 0
    kernel_size: int = 4

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h0, w0, c0 = bottleneck_shape(self.image_shape, self.channels)
        h = z
        if self.hidden:
            h = nn.relu(Dense(self.hidden, name="hidden")(h))
        h = nn.relu(Dense(h0 * w0 * c0, name="fc3")(h))
        h = h.reshape(z.shape[0], h0, w0, c0)
        up = [*reversed(self.channels[:-1]), self.out_channels]
        for i, c in enumerate(up):
            h = ConvTranspose(
                c, (self.kernel_size, self.kernel_size), strides=(2, 2), padding="SAME", name=f"deconv_{i}"
            )(h)
            if i < len(up) - 1:
                h = nn.relu(h)
        return h[:, : self.image_shape[0], : self.image_shape[1]]


class ConvVAE(GaussianVAE):
    """Convolutional VAE: the :class:`~vae_jax.models.vae.GaussianVAE` core (its ``__call__``, ``encode``,
    ``decode``) with conv networks; the decoder output has C channels, or 2C with a learned variance."""

    image_shape: Sequence[int] = (28, 28, 1)
    latent_dim: int = 16
    channels: Sequence[int] = (16, 32)
    hidden: int = 128
    kernel_size: int = 4
    likelihood: str = "bernoulli"

    def setup(self):
        out_channels, self.shared_logvar = decoder_head(self.likelihood, self.image_shape[-1])
        self.encoder = ConvEncoder(tuple(self.channels), self.latent_dim, self.hidden, self.kernel_size)
        self.decoder = ConvDecoder(
            tuple(self.channels), tuple(self.image_shape), out_channels, self.hidden, self.kernel_size
        )
