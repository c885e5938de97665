"""The convolutional VQ-VAE of van den Oord, Vinyals & Kavukcuoglu (NeurIPS 2017).

x ``[B, H, W, C]`` -> encoder -> z_e ``[B, H/4, W/4, D]`` -> nearest code of
the ``[K, D]`` codebook at every grid cell (:func:`vae_jax.quantize.vector_quantize`,
straight-through gradient) -> z_q -> decoder -> per-pixel logits ``[B, H, W, C]``.

Architecture (the paper's, with fewer channels): the encoder is two
4x4 stride-2 convolutions (each halves the size: 28 -> 14 -> 7, 32 -> 16 -> 8),
a 3x3 convolution, ``num_res_blocks`` residual blocks
(ReLU, 3x3 conv, ReLU, 1x1 conv, added to the input), a ReLU and a 1x1
convolution to the code dimension D. The decoder mirrors it: a 3x3 conv
from D, the residual blocks, and two 4x4 stride-2 transposed convolutions
back to the image size. The convolutions are XLA's (much faster on a CPU than the
from-the-definition layers). The network computes in the dtype of its input;
:meth:`VQVAE.quantize` always searches the codebook ``params["codebook"]`` ``[K, D]`` in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import quantize
from vae_jax.models.layers import Conv, ConvTranspose


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))`` with ``hidden`` channels inside (the paper's residual block)."""

    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = Conv(self.hidden, (3, 3), padding="SAME", name="conv3x3")(nn.relu(x))
        return x + Conv(x.shape[-1], (1, 1), name="conv1x1")(nn.relu(h))


class VQVAE(nn.Module):
    """VQ-VAE with a ``num_codes x code_dim`` codebook over an ``H/4 x W/4`` grid.

    ``channels``: ``(c1, c2)`` after the first and the second down-convolution; ``image_shape``
    ``(H, W, C)`` with H and W divisible by 4; ``cosine``: l2-normalised vectors and codes.
    """

    num_codes: int = 64
    code_dim: int = 16
    channels: Sequence[int] = (32, 64)
    num_res_blocks: int = 1
    image_shape: Sequence[int] = (28, 28, 1)
    cosine: bool = False

    def setup(self):
        h, w, c = self.image_shape
        if h % 4 or w % 4:
            raise ValueError(f"image height and width must be divisible by 4, got {h}x{w}")
        c1, c2 = self.channels
        self.enc_down1 = Conv(c1, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))
        self.enc_down2 = Conv(c2, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))
        self.enc_conv = Conv(c2, (3, 3), padding="SAME")
        self.enc_res = [ResidualBlock(max(c2 // 2, 1)) for _ in range(self.num_res_blocks)]
        self.enc_out = Conv(self.code_dim, (1, 1))
        self.dec_in = Conv(c2, (3, 3), padding="SAME")
        self.dec_res = [ResidualBlock(max(c2 // 2, 1)) for _ in range(self.num_res_blocks)]
        self.dec_up1 = ConvTranspose(c1, (4, 4), strides=(2, 2), padding="SAME")
        self.dec_up2 = ConvTranspose(c, (4, 4), strides=(2, 2), padding="SAME")
        # The paper's PyTorch ports draw codes from U(-1/K, 1/K); unit-variance-per-vector
        # codes are nearer to the encoder outputs' scale, so fewer start dead.
        self.codebook = self.param(
            "codebook", nn.initializers.variance_scaling(1.0, "fan_out", "uniform"), (self.num_codes, self.code_dim)
        )

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(H', W') = (H/4, W/4)``, the code grid."""
        return self.image_shape[0] // 4, self.image_shape[1] // 4

    def encode(self, x: jax.Array) -> jax.Array:
        """z_e ``[B, H/4, W/4, D]`` of images ``[B, H, W, C]``."""
        h = nn.relu(self.enc_down1(x))
        h = nn.relu(self.enc_down2(h))
        h = self.enc_conv(h)
        for block in self.enc_res:
            h = block(h)
        return self.enc_out(nn.relu(h))

    def quantize(self, z_e: jax.Array) -> quantize.Quantized:
        """Nearest codes of ``z_e`` ``[..., D]`` (:func:`vae_jax.quantize.vector_quantize`), in float32 always:
        under bfloat16 compute the codebook search and the VQ terms keep float32's precision."""
        return quantize.vector_quantize(z_e.astype(jnp.float32), self.codebook.astype(jnp.float32), self.cosine)

    def decode(self, z_q: jax.Array) -> jax.Array:
        """Logits ``[B, H, W, C]`` of quantized grids ``[B, H/4, W/4, D]``."""
        h = self.dec_in(z_q)
        for block in self.dec_res:
            h = block(h)
        h = nn.relu(self.dec_up1(nn.relu(h)))
        return self.dec_up2(h)

    def decode_indices(self, indices: jax.Array) -> jax.Array:
        """Logits ``[B, H, W, C]`` of code-index grids ``[B, H/4, W/4]`` (e.g. sampled from a prior)."""
        codebook = quantize.l2_normalize(self.codebook) if self.cosine else self.codebook
        return self.decode(jnp.take(codebook, indices, axis=0))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, quantize.Quantized]:
        """x ``[B, H, W, C]`` -> (logits ``[B, H, W, C]``, :class:`~vae_jax.quantize.Quantized` of its grid)."""
        z_e = self.encode(x)
        quantized = self.quantize(z_e)
        return self.decode(quantized.z_q.astype(z_e.dtype)), quantized


def init_params(model: VQVAE, key: jax.Array) -> dict:
    """Initial params for ``model`` from ``key`` (shapes only; no data needed)."""
    return model.init(key, jnp.zeros((1, *model.image_shape), jnp.float32))["params"]
