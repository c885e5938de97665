"""The deterministic autoencoder x -> z = e(x) -> d(z), MLP or convolutional.

The plain, denoising, masked and contractive autoencoders of the lectures all
share this model; they differ only in what goes in and in the loss
(``vae_jax.tasks.ae_task``). With ``hidden=()`` and ``arch="mlp"`` both maps
are linear: the linear autoencoder whose optimum spans the PCA subspace.

``arch="mlp"``: the image is flattened, ``hidden`` gives the encoder's ReLU
layer widths (the "deep autoencoder" when there are several), a linear layer
gives the code z; the decoder mirrors the widths in reverse.

``arch="conv"``: every entry of ``hidden`` is one down-block, 3x3 conv + ReLU
+ 2x2 max pool (an odd height or width is zero-padded to even first, so the
pool rounds up: 28 -> 14 -> 7 -> 4); a linear layer maps the last feature map
to z. The decoder maps z back to that feature map and goes up one block per
down-block, by ``upsampling``: ``"transpose"`` (a stride-2 transposed conv),
``"upsample"`` (nearest-neighbour upsampling, then a 3x3 conv) or ``"unpool"``
(max-unpooling with the encoder's pooling indices, then a 3x3 conv: Zeiler &
Fergus 2014's "switches"; SegNet). Each way up is cropped to the size before
its pool; a last 3x3 conv gives the output logits, the image is their sigmoid.

With ``upsampling="unpool"`` the decoder needs the indices of the input being
reconstructed: use ``__call__`` (or ``encode_with_indices`` then
``decode(z, indices)``); ``decode(z)`` without indices raises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.models import layers

ARCHS = ("mlp", "conv")
UPSAMPLINGS = ("transpose", "upsample", "unpool")
# our names -> the mode names of vae_jax.models.layers.UpBlock
_UP_MODE = {"transpose": "transposed_conv", "upsample": "upsample_conv", "unpool": "unpool"}


def conv_level_sizes(height: int, width: int, num_blocks: int) -> list[tuple[int, int]]:
    """Spatial sizes before each pool and after the last: ``[(H, W), (ceil(H/2), ceil(W/2)), ...]``."""
    sizes = [(height, width)]
    for _ in range(num_blocks):
        h, w = sizes[-1]
        sizes.append((-(-h // 2), -(-w // 2)))
    return sizes


def _pad_to_even(x: jax.Array) -> jax.Array:
    """Zero-pads the bottom/right of ``[N, H, W, C]`` to even H and W (inputs are post-ReLU, >= 0)."""
    h, w = x.shape[1:3]
    return jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


class AutoEncoder(nn.Module):
    """Deterministic autoencoder; see the module docstring for the architectures.

    ``hidden`` holds the MLP layer widths, or the conv channels per down-block for ``arch="conv"``
    (where ``upsampling`` is the decoder's way up).
    """

    latent_dim: int = 32
    arch: str = "mlp"
    hidden: Sequence[int] = (512, 256)
    image_shape: Sequence[int] = (28, 28, 1)
    upsampling: str = "transpose"

    def setup(self):
        for name, choices in (("arch", ARCHS), ("upsampling", UPSAMPLINGS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.latent_dim <= 0:
            raise ValueError(f"latent_dim must be a positive integer, got {self.latent_dim!r}")
        if any(w <= 0 for w in self.hidden):
            raise ValueError(f"hidden must hold positive widths, got {tuple(self.hidden)!r}")
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {tuple(self.image_shape)!r}")
        hidden = tuple(self.hidden)
        if self.arch == "mlp":
            self.encoder_layers = [layers.Dense(w, name=f"enc_dense_{i}") for i, w in enumerate(hidden)]
            self.decoder_layers = [layers.Dense(w, name=f"dec_dense_{i}") for i, w in enumerate(reversed(hidden))]
            self.decoder_out = layers.Dense(math.prod(self.image_shape), name="dec_out")
        else:
            if not hidden:
                raise ValueError("hidden must hold at least one channel count for arch 'conv'")
            self.encoder_convs = [layers.Conv2d(c, 3, name=f"enc_conv_{i}") for i, c in enumerate(hidden)]
            self.pool = layers.MaxPoolWithIndices(2)
            h, w = conv_level_sizes(*self.image_shape[:2], len(hidden))[-1]
            self.decoder_in = layers.Dense(h * w * hidden[-1], name="dec_in")
            # Up-block i undoes pool i: from hidden[i] channels to hidden[i - 1] (hidden[0] for the first).
            self.up_blocks = [
                layers.UpBlock(
                    hidden[max(i - 1, 0)], mode=_UP_MODE[self.upsampling], factor=2, kernel_size=3, name=f"up_{i}"
                )
                for i in range(len(hidden))
            ]
            self.decoder_out = layers.Conv2d(self.image_shape[-1], 3, name="dec_out")
        self.to_code = layers.Dense(self.latent_dim, name="code")

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x ``[B, H, W, C]`` -> (decoder output ``[B, H, W, C]`` logits, z ``[B, latent_dim]``)."""
        z, indices = self.encode_with_indices(x)
        return self.decode(z, indices), z

    def encode(self, x: jax.Array) -> jax.Array:
        """The code z ``[B, latent_dim]`` of images ``[B, H, W, C]``."""
        return self.encode_with_indices(x)[0]

    def encode_with_indices(self, x: jax.Array) -> tuple[jax.Array, tuple | None]:
        """(z ``[B, latent_dim]``, pooling indices per down-block or None for ``"mlp"``)."""
        if self.arch == "mlp":
            h = x.reshape(x.shape[0], -1)
            for layer in self.encoder_layers:
                h = nn.relu(layer(h))
            return self.to_code(h), None
        h, indices = x, []
        for conv in self.encoder_convs:
            h, idx = self.pool(_pad_to_even(nn.relu(conv(h))))
            indices.append(idx)
        return self.to_code(h.reshape(h.shape[0], -1)), tuple(indices)

    def decode(self, z: jax.Array, indices: tuple | None = None) -> jax.Array:
        """Decoder output (logits) ``[B, H, W, C]`` of codes ``[B, latent_dim]``.

        ``indices`` (from :meth:`encode_with_indices`) is required for
        ``arch="conv"`` with ``upsampling="unpool"`` and ignored otherwise.
        """
        if self.arch == "mlp":
            h = z
            for layer in self.decoder_layers:
                h = nn.relu(layer(h))
            return self.decoder_out(h).reshape(z.shape[0], *self.image_shape)
        if self.upsampling == "unpool" and indices is None:
            raise ValueError(
                'decode needs the pooling indices for upsampling="unpool": call the model, '
                "or decode(z, indices) with indices from encode_with_indices"
            )
        hidden = tuple(self.hidden)
        sizes = conv_level_sizes(*self.image_shape[:2], len(hidden))
        h = nn.relu(self.decoder_in(z)).reshape(z.shape[0], *sizes[-1], hidden[-1])
        for i in reversed(range(len(hidden))):
            idx = indices[i] if self.upsampling == "unpool" else None
            h = self.up_blocks[i](h, idx)  # [B, 2 * ceil(H_i / 2), 2 * ceil(W_i / 2), C_{i-1}]
            h = nn.relu(h[:, : sizes[i][0], : sizes[i][1]])
        return self.decoder_out(h)


def init_params(model: AutoEncoder, key: jax.Array) -> dict:
    """Initial params for ``model`` from ``key`` (shapes only; no data needed)."""
    x = jnp.zeros((1, *model.image_shape), jnp.float32)
    return model.init(key, x)["params"]
