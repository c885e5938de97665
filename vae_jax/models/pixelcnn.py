"""Gated PixelCNN over a grid of discrete codes: the learned prior of a VQ-VAE.

A VQ-VAE trains with a uniform prior over its H'×W' grid of code indices;
to generate, one fits an autoregressive prior over the grid in raster order
(van den Oord et al. 2017, "Neural Discrete Representation Learning"):

    p(c) = prod_{i=1}^{H'W'} p(c_i | c_1, ..., c_{i-1}),   c_i in {0, ..., K-1},

with every conditional a softmax over K codes computed by one convolutional
network whose convolutions are masked so that position i never sees
positions >= i. This module is that network, after van den Oord et al. 2016,
"Conditional Image Generation with PixelCNN Decoders" (gated PixelCNN):

* **Two stacks.** A plain PixelCNN's (van den Oord et al. 2016, "Pixel
  Recurrent Neural Networks") k×k convolutions masked to "rows above + left
  in the row" miss a growing wedge above and to the right of each position
  (the *blind spot*). The gated PixelCNN splits them: a **vertical
  stack** v whose feature at (i, j) depends on whole rows strictly above i,
  and a **horizontal stack** h whose feature at (i, j) depends on positions
  left of j in row i and, through a 1×1 link from v, on the rows above.
  Their union is every earlier position within reach: no blind spot.
* **Masks A and B.** The first layer reads the code embeddings and must not
  see position (i, j) itself: mask **A**. Later layers read features that
  already exclude (i, j), so they may include the centre: mask **B**
  (:func:`causal_mask`).
* **Gated activation.** Each stack's convolution gives 2F channels split into
  a filter and a gate, y = tanh(W_f * x + V_f s) ⊙ σ(W_g * x + V_g s), with s an
  optional class embedding (the conditional PixelCNN). The horizontal stack
  adds a 1×1 output projection and a residual connection (from the second
  layer on: the first layer's input, the embedding at (i, j), would leak
  the position's own code).

Shapes: codes ``[B, H, W]`` int in [0, K) (labels ``[B]`` int when
conditional) -> logits ``[B, H, W, K]``; ``logits[b, i, j]`` parameterises
p(c_{ij} | codes before (i, j) in raster order).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.models.layers import Dense, Embed, add_bias

STACKS = ("vertical", "horizontal")
MASK_TYPES = ("A", "B")


def causal_mask(kernel_size: int, stack: str, mask_type: str) -> np.ndarray:
    """The 0/1 mask of one stack's kernel, centred on the output position.

    ``mask_type`` ``A`` (first layer) excludes the centre's own row or position, ``B`` (later
    layers) includes it. Returns float32 ``[k, k]`` (``stack="vertical"``) or ``[1, k]``
    (``"horizontal"``), k odd; entry (r, c) is 1 where the input at offset (r - k//2, c - k//2)
    may reach the output:

        vertical A:   r <  k//2 (all columns)      vertical B:   r <= k//2
        horizontal A: c <  k//2                    horizontal B: c <= k//2
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive integer, got {kernel_size!r}")
    for name, value, choices in (("stack", stack, STACKS), ("mask_type", mask_type, MASK_TYPES)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    centre = kernel_size // 2
    offsets = np.arange(kernel_size)
    allowed = offsets < centre if mask_type == "A" else offsets <= centre
    if stack == "vertical":
        return np.repeat(allowed[:, None], kernel_size, axis=1).astype(np.float32)
    return allowed[None, :].astype(np.float32)


def mask_taps(mask: np.ndarray) -> list[tuple[int, int]]:
    """The offsets ``(dr, dc)`` from the centre of a ``[kh, kw]`` mask's non-zero entries, in raster order.

    Entry (r, c) of the mask is offset ``(r - kh//2, c - kw//2)``: the input at
    (i + dr, j + dc) reaches the output at (i, j).
    """
    kh, kw = mask.shape
    return [(int(r) - kh // 2, int(c) - kw // 2) for r, c in zip(*np.nonzero(mask))]


class MaskedConv(nn.Module):
    """A 'SAME'-padded, stride-1 2-D convolution whose kernel is zero wherever a fixed 0/1 mask is.

        y[b, i, j] = bias + sum_{(dr, dc) in taps} x[b, i + dr, j + dc] @ W[tap]     (x is 0 outside the grid)

    Only the mask's non-zero taps (:func:`mask_taps`) hold weights, so the
    masked entries are not merely multiplied by zero: they do not exist. It is
    computed as one matrix multiply of the shifted inputs stacked on the
    channel axis (``[B, H, W, taps·C_in] @ [taps·C_in, F]``): on the CPU, XLA
    runs a convolution's gradient inside a ``lax.scan`` (the shared driver's
    fused epoch) many times slower than outside it, while a matrix multiply
    keeps its speed (docs/benchmarks.md).

    ``features``: F, output channels; ``mask``: ``[kh, kw]`` 0/1 (odd kh and kw) from :func:`causal_mask`.
    """

    features: int
    mask: np.ndarray

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H, W, features]
        taps = mask_taps(np.asarray(self.mask))
        in_channels = x.shape[-1]
        # LeCun normal over the true fan-in (taps · C_in), drawn 2-D (XLA on CPU compiles 4-D draws slowly).
        init = nn.initializers.lecun_normal()
        kernel = self.param(
            "kernel",
            lambda key, shape: init(key, (shape[0] * shape[1], shape[2])).reshape(shape),
            (len(taps), in_channels, self.features),
        )  # [taps, C_in, F]
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        height, width = x.shape[1:3]
        top, left = max(0, -min(dr for dr, _ in taps)), max(0, -min(dc for _, dc in taps))
        bottom, right = max(0, max(dr for dr, _ in taps)), max(0, max(dc for _, dc in taps))
        padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        shifted = jnp.concatenate(
            [padded[:, top + dr : top + dr + height, left + dc : left + dc + width] for dr, dc in taps], axis=-1
        )
        return add_bias(shifted @ kernel.reshape(len(taps) * in_channels, self.features), bias)


def gated_activation(pre: jax.Array) -> jax.Array:
    """tanh(filter) ⊙ sigmoid(gate) of the channel halves ``[..., 2F] -> [..., F]``."""
    filter_pre, gate_pre = jnp.split(pre, 2, axis=-1)
    return jnp.tanh(filter_pre) * jax.nn.sigmoid(gate_pre)


class GatedLayer(nn.Module):
    """One gated PixelCNN layer: ``(v, h, class_embedding) -> (v', h')``, all ``[B, H, W, F]``.

        v_pre = W_v * v (+ V_v s)                 masked k×k, stack "vertical"
        h_pre = W_h * h + U (v_pre) (+ V_h s)     masked 1×k, stack "horizontal"; U 1×1
        v'    = tanh ⊙ σ (v_pre)
        h'    = h + O (tanh ⊙ σ (h_pre))          O 1×1; no residual for mask A

    ``features`` F, odd ``kernel_size`` k, ``mask_type`` ``A`` for the first layer, ``B`` after.
    """

    features: int
    kernel_size: int
    mask_type: str

    @nn.compact
    def __call__(self, v: jax.Array, h: jax.Array, class_embedding: jax.Array | None = None):
        two_f = 2 * self.features
        v_pre = MaskedConv(two_f, causal_mask(self.kernel_size, "vertical", self.mask_type), name="vertical")(v)
        h_pre = MaskedConv(two_f, causal_mask(self.kernel_size, "horizontal", self.mask_type), name="horizontal")(h)
        # v_pre at (i, j) depends on rows strictly above i only, so the horizontal stack may read it at (i, j).
        h_pre = h_pre + Dense(two_f, name="vertical_to_horizontal")(v_pre)
        if class_embedding is not None:  # [B, 2F] per stack, broadcast over the grid
            v_pre = v_pre + Dense(two_f, use_bias=False, name="class_vertical")(class_embedding)[:, None, None]
            h_pre = h_pre + Dense(two_f, use_bias=False, name="class_horizontal")(class_embedding)[:, None, None]
        v_out = gated_activation(v_pre)
        h_out = Dense(self.features, name="horizontal_out")(gated_activation(h_pre))
        if self.mask_type == "B":
            h_out = h + h_out
        return v_out, h_out


class PixelCNN(nn.Module):
    """Gated PixelCNN prior over ``H×W`` grids of codes in [0, K) (optionally class-conditional).

    code embedding -> ``num_layers`` :class:`GatedLayer` (mask A, then B) ->
    ReLU -> 1×1 (``features``) -> ReLU -> 1×1 (K logits), read from the
    horizontal stack. With kernel k and L layers, position (i, j) sees the
    earlier positions up to L·(k//2) rows above (±L·(k//2) columns) and
    L·(k//2) columns to its left, in its own row.

    ``num_codes`` is K, ``features`` F (channels of both stacks); ``num_classes`` > 0 makes the prior
    class-conditional (labels ``[B]`` in [0, num_classes)).
    """

    num_codes: int
    features: int = 64
    num_layers: int = 5
    kernel_size: int = 3
    num_classes: int = 0

    def setup(self):
        self.embed = Embed(self.num_codes, self.features)
        if self.num_classes:
            self.class_embed = Embed(self.num_classes, self.features)
        self.layers = [
            GatedLayer(self.features, self.kernel_size, "A" if i == 0 else "B") for i in range(self.num_layers)
        ]
        self.hidden_out = Dense(self.features)
        self.logits_out = Dense(self.num_codes)

    def __call__(self, codes: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """Logits ``[B, H, W, K]`` of codes ``[B, H, W]`` (and labels ``[B]`` when conditional)."""
        return self.logits_from_embeddings(self.embed(codes), labels)

    def logits_from_embeddings(self, embedded: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """Logits ``[B, H, W, K]`` from the code embeddings ``[B, H, W, F]`` (differentiable input)."""
        if self.num_classes and labels is None:
            raise ValueError("this PixelCNN is class-conditional: pass labels [B]")
        class_embedding = self.class_embed(labels) if self.num_classes else None  # [B, F]
        v = h = embedded
        for layer in self.layers:
            v, h = layer(v, h, class_embedding)
        return self.logits_out(nn.relu(self.hidden_out(nn.relu(h))))


def init_params(model: PixelCNN, key: jax.Array, grid_shape: Sequence[int]) -> dict:
    """Initial params of ``model`` for ``grid_shape = (H, W)`` grids (shapes only; no data needed).

    Jitted: run eagerly, flax's init would dispatch (and compile) every op of the network one at a time.
    """
    codes = jnp.zeros((1, *grid_shape), jnp.int32)
    labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    return jax.jit(lambda k: model.init(k, codes, labels)["params"])(key)
