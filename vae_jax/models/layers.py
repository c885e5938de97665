"""Linen layers built on ``vae_jax.ops``, and bfloat16-safe versions of flax's.

A convolutional decoder has to undo the encoder's downsampling; the lectures
give three ways (a transposed convolution, fixed upsampling then a convolution,
max-unpooling with the encoder's indices then a convolution), and ``UpBlock``
picks one by config (``mode``).

Every layer takes ``[N, H, W, C]`` or a single unbatched image ``[H, W, C]``
(so a model can be written per example and batched with ``jax.vmap``) and
returns the same rank; kernels are HWIO. Sizes are module attributes or static
call arguments, so the layers work under ``jax.jit``. The pooling indices are
int32 arrays: return them from the encoder and pass them to the decoder.

``Dense``, ``Embed``, ``Conv`` and ``ConvTranspose`` are ``flax.linen``'s layers (same parameters,
initialisers and values) whose bias, or embedding lookup, keeps float32 gradient sums when the
layer computes in bfloat16 (:mod:`vae_jax.precision`). Where flax's own layers fall short: given
``dtype=bfloat16, param_dtype=float32`` they add the bias in bfloat16 (and look embeddings up in
it), so a bias's gradient over thousands of positions, or a row's over its lookups, is a bfloat16
sum that stalls: 67-92% off the float32 gradient, against 0.3% for the kernels (measured by
``tests/test_layers.py::test_flax_layers_in_bfloat16_sum_bias_and_embedding_gradients_in_bfloat16``).
flax's own remedy, a float32 product before the bias add (``preferred_element_type=float32``),
passes that test too, but needs the compute dtype given to every layer by its model, where these
layers take it from their input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import ops

__all__ = [
    "UP_MODES",
    "Conv",
    "Conv2d",
    "ConvTranspose",
    "ConvTranspose2d",
    "Dense",
    "Embed",
    "MaxPoolWithIndices",
    "MaxUnpool",
    "UpBlock",
    "UpsampleConv",
    "add_bias",
    "float32_or_wider",
]

UP_MODES = ("transposed_conv", "upsample_conv", "unpool")

Initializer = Callable[..., Any]
IntOrPair = int | Sequence[int]
_NHWC = ("NHWC", "HWIO", "NHWC")


def _add_batch(x: jax.Array, name: str) -> tuple[jax.Array, bool]:
    """Returns ``x`` as NHWC and whether a batch axis was added."""
    if jnp.ndim(x) == 3:
        return x[None], True
    if jnp.ndim(x) == 4:
        return x, False
    raise ValueError(f"{name} must be [N, H, W, C] or [H, W, C], got shape {jnp.shape(x)}")


def _drop_batch(x: jax.Array, added: bool) -> jax.Array:
    return x[0] if added else x


def _pair(value: IntOrPair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def float32_or_wider(dtype) -> jnp.dtype:
    """``dtype`` when it has float32's precision or more, else float32: the dtype a long sum is kept in."""
    return jnp.promote_types(dtype, jnp.float32)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` (bias along the last axis), added in float32 when ``y`` is a narrower float.

    A bias's gradient is the sum of the output's gradient over every position
    it was added at -- B x H x W of them for a convolution -- and JAX sums it
    in the addition's dtype. In bfloat16 (8-bit mantissa) that sum stops
    growing once it is a few hundred times larger than its terms: the conv
    VAE's last bias kept a small fraction of its gradient (docs/benchmarks.md).
    Adding in float32 makes the sum float32; the result is rounded back
    to ``y``'s dtype. For float32 ``y`` this is the plain ``y + bias``.
    """
    wide = float32_or_wider(y.dtype)
    return (y.astype(wide) + bias.astype(wide)).astype(y.dtype)


def _with_bias(module: nn.Module, x: jax.Array, window: tuple[int, ...], apply_fn) -> jax.Array:
    """``apply_fn(x, kernel)`` with ``module``'s ``kernel [*window, C, features]``, plus its ``bias`` (if
    ``use_bias``) added by :func:`add_bias`."""
    kernel = module.param("kernel", module.kernel_init, (*window, x.shape[-1], module.features))
    y = apply_fn(x, kernel)
    if module.use_bias:
        y = add_bias(y, module.param("bias", module.bias_init, (module.features,)))
    return y


class Conv2d(nn.Module):
    """Learned convolution on ``ops.conv2d`` (cross-correlation) plus bias (added by :func:`add_bias`).

    Attributes:
      features: output channels ``O``. kernel_size, stride: int or pair.
      padding: int or pair of zeros on each border; ``None`` (default) pads
        ``(k - 1) // 2``, which keeps the size for odd kernels at stride 1.
      use_bias, kernel_init, bias_init: as in ``flax.linen.Conv``.

    Call: ``x [N, H, W, C] -> [N, oh, ow, O]`` with
    ``oh = ops.conv_output_size(H, kh, stride, padding)``.
    """

    features: int
    kernel_size: IntOrPair = 3
    stride: IntOrPair = 1
    padding: IntOrPair | None = None
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x, added = _add_batch(x, "x")
        kh, kw = _pair(self.kernel_size)
        padding = ((kh - 1) // 2, (kw - 1) // 2) if self.padding is None else self.padding
        y = _with_bias(self, x, (kh, kw), lambda x, kernel: ops.conv2d(x, kernel, self.stride, padding))
        return _drop_batch(y, added)


class ConvTranspose2d(nn.Module):
    """Learned transposed convolution on ``ops.conv_transpose2d`` plus bias (:func:`add_bias`).

    Equals ``torch.nn.ConvTranspose2d`` with the same stride/padding/output_padding
    (weights transposed to OIHW order).

    Attributes:
      features: output channels ``O``. kernel_size: int or ``(kh, kw)``.
      stride, padding, output_padding: as in ``ops.conv_transpose2d`` (``0 <= output_padding < stride``).
      use_bias, kernel_init, bias_init: as in ``flax.linen.ConvTranspose``.

    Call: ``x [N, H, W, C] -> [N, oh, ow, O]`` with
    ``oh = s (H - 1) + kh - 2p + output_padding``.
    """

    features: int
    kernel_size: IntOrPair = 3
    stride: IntOrPair = 1
    padding: IntOrPair = 0
    output_padding: IntOrPair = 0
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x, added = _add_batch(x, "x")

        def convolve(x, kernel):
            return ops.conv_transpose2d(x, kernel, self.stride, self.padding, self.output_padding)

        return _drop_batch(_with_bias(self, x, _pair(self.kernel_size), convolve), added)


class Dense(nn.Module):
    """``flax.linen.Dense`` (the same ``kernel [in, features]``, ``bias``, initialisers and XLA program, tested)
    with its bias added by :func:`add_bias`, so that under bfloat16 compute the bias's gradient, summed over
    every position of every example it was added at, is a float32 sum. Computes in the input's dtype.
    """

    features: int
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dims = (((x.ndim - 1,), (0,)), ((), ()))
        return _with_bias(self, x, (), lambda x, kernel: jax.lax.dot_general(x, kernel.astype(x.dtype), dims))


class Embed(nn.Module):
    """``flax.linen.Embed`` (the same ``embedding [num_embeddings, features]`` and initialiser) whose lookup
    runs in float32 when the table is narrower, so that the table's gradient -- each row the sum of the
    gradients at every position that looked it up -- is a float32 sum; the rows come out in the table's dtype.
    """

    num_embeddings: int
    features: int
    embedding_init: Initializer = nn.linear.default_embed_init

    @nn.compact
    def __call__(self, indices: jax.Array) -> jax.Array:
        table = self.param("embedding", self.embedding_init, (self.num_embeddings, self.features))
        return jnp.take(table.astype(float32_or_wider(table.dtype)), indices, axis=0).astype(table.dtype)


class _XlaConvLayer(nn.Module):
    """The attributes, parameters and bias of a ``flax.linen`` convolution layer (the bias added by
    :func:`add_bias`); a subclass's ``convolve(x, kernel)`` is the convolution itself.

    The same parameters (``kernel [kh, kw, C, O]``, ``bias [O]``), initialisers and values as flax's
    layer with the same arguments (tested), so a model can switch between them and keep its
    checkpoints; what differs is that under bfloat16 compute the bias's gradient is summed in float32.
    """

    features: int
    kernel_size: Sequence[int]
    strides: IntOrPair = 1
    padding: str | Sequence[tuple[int, int]] = "SAME"  # "SAME", "VALID" or ((top, bottom), (left, right))
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    def convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _with_bias(self, x, tuple(self.kernel_size), lambda x, kernel: self.convolve(x, kernel.astype(x.dtype)))


class Conv(_XlaConvLayer):
    """``flax.linen.Conv`` (the same XLA convolution) for NHWC images and SAME, VALID or explicit padding.

    Call: ``x [N, H, W, C] -> [N, oh, ow, O]`` (``oh = ceil(H / sh)`` for SAME).
    """

    def convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        padding = self.padding if isinstance(self.padding, str) else tuple(map(tuple, self.padding))
        return jax.lax.conv_general_dilated(x, kernel, _pair(self.strides), padding, dimension_numbers=_NHWC)


class ConvTranspose(_XlaConvLayer):
    """``flax.linen.ConvTranspose`` for SAME/VALID padding; on the CPU backend, with a faster kernel gradient.

    Attributes:
      fast_kernel_grad: ``True``: :func:`vae_jax.ops.conv_transpose`, the same values with the kernel
        gradient asked of XLA as a strided convolution's weight gradient (measured faster on XLA:CPU only;
        docs/benchmarks.md). ``False``: ``lax.conv_transpose`` and its own gradient, as flax computes them.
        ``None`` (default): ``True`` on the CPU backend, where it was measured, ``False`` elsewhere until a
        measurement there shows a gain.

    Call: ``x [N, H, W, C] -> [N, oh, ow, O]`` (``oh = H * sh`` for SAME).
    """

    fast_kernel_grad: bool | None = None

    def convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        fast = jax.default_backend() == "cpu" if self.fast_kernel_grad is None else self.fast_kernel_grad
        if fast:
            return ops.conv_transpose(x, kernel, _pair(self.strides), self.padding)
        return jax.lax.conv_transpose(x, kernel, _pair(self.strides), self.padding, dimension_numbers=_NHWC)


class MaxPoolWithIndices(nn.Module):
    """Max pooling that remembers where each maximum came from.

    Attributes:
      window: int or ``(wh, ww)``. stride: int or pair; ``None`` (default) means ``window``.

    Call: ``x [N, H, W, C] -> (pooled, indices)``, both ``[N, oh, ow, C]``
    with ``oh = (H - wh) // sh + 1``. ``indices`` (int32) is the flat
    position ``u * W + v`` of each maximum in its ``H x W`` plane; hand it,
    with ``(H, W)`` when it is not ``stride * (oh - 1) + window``, to
    ``MaxUnpool`` or ``UpBlock(mode="unpool")``.
    """

    window: IntOrPair = 2
    stride: IntOrPair | None = None

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, added = _add_batch(x, "x")
        pooled, indices = ops.max_pool_with_indices(x, self.window, self.stride)
        return _drop_batch(pooled, added), _drop_batch(indices, added)


class MaxUnpool(nn.Module):
    """Puts pooled maxima back at their remembered positions, zeros elsewhere.

    Attributes:
      window, stride: those of the matching ``MaxPoolWithIndices``; used only
        for the default output size.

    Call: ``(pooled [N, oh, ow, C], indices [N, oh, ow, C], output_hw=None)
    -> [N, H, W, C]``. ``output_hw`` (static ints) defaults to
    ``(sh (oh - 1) + wh, sw (ow - 1) + ww)``, the smallest input the pool maps
    to ``(oh, ow)``; pass the encoder's ``(H, W)`` when pooling dropped rows.
    """

    window: IntOrPair = 2
    stride: IntOrPair | None = None

    def __call__(
        self,
        pooled: jax.Array,
        indices: jax.Array,
        output_hw: Sequence[int] | None = None,
    ) -> jax.Array:
        pooled, added = _add_batch(pooled, "pooled")
        indices, _ = _add_batch(indices, "indices")
        if output_hw is None:
            (wh, ww) = _pair(self.window)
            (sh, sw) = _pair(self.window if self.stride is None else self.stride)
            output_hw = (sh * (pooled.shape[1] - 1) + wh, sw * (pooled.shape[2] - 1) + ww)
        return _drop_batch(ops.max_unpool(pooled, indices, tuple(output_hw)), added)


class UpsampleConv(nn.Module):
    """Fixed upsampling followed by a learned convolution ("resize-convolution").

    Attributes:
      features: output channels ``O``. scale: int or pair upsampling factor.
      method: ``"nearest"`` or ``"bilinear"`` (``ops.UPSAMPLE_METHODS``).
      kernel_size: odd int (or pair) for the size-preserving ``Conv2d``.

    Call: ``x [N, H, W, C] -> [N, scale * H, scale * W, O]``.
    """

    features: int
    scale: IntOrPair = 2
    method: str = "nearest"
    kernel_size: IntOrPair = 3
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x, added = _add_batch(x, "x")
        y = ops.upsample(x, self.scale, self.method)
        y = Conv2d(self.features, self.kernel_size, use_bias=self.use_bias, name="conv")(y)
        return _drop_batch(y, added)


class UpBlock(nn.Module):
    """The decoder's way up, chosen by ``mode`` (one of ``UP_MODES``).

    * ``"transposed_conv"``: ``ConvTranspose2d(features, kernel_size,
      stride=factor)`` with ``padding = max(0, ceil((k - factor) / 2))`` and
      the ``output_padding`` that makes the output ``factor`` times the input
      (e.g. k=3, factor=2: padding 1, output_padding 1; k=4: padding 1, 0).
    * ``"upsample_conv"``: ``UpsampleConv(features, factor, method,
      kernel_size)``.
    * ``"unpool"``: ``MaxUnpool(window=factor)`` with the encoder's
      ``indices``, then ``Conv2d(features, kernel_size)``.

    No activation is applied; the caller adds one.

    Attributes:
      features: output channels ``O``. factor: integer upsampling factor (the encoder's pool window/stride).
      kernel_size: int; odd for the ``upsample_conv``/``unpool`` convs. method: interpolation for ``"upsample_conv"``.

    Call: ``(x [N, h, w, C], indices=None, output_hw=None) -> [N, H, W, O]``.
    ``indices`` (``[N, h, w, C]``, from ``MaxPoolWithIndices``) is required
    for ``"unpool"`` and ignored otherwise. ``output_hw`` defaults to
    ``(factor * h, factor * w)``; ``"unpool"`` accepts any size the indices
    fit in, ``"transposed_conv"`` any size reachable with
    ``0 <= output_padding < factor``, ``"upsample_conv"`` only the default.
    """

    features: int
    mode: str = "transposed_conv"
    factor: int = 2
    kernel_size: int = 3
    method: str = "nearest"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        indices: jax.Array | None = None,
        output_hw: Sequence[int] | None = None,
    ) -> jax.Array:
        if self.mode not in UP_MODES:
            raise ValueError(f"mode must be one of {UP_MODES}, got {self.mode!r}")
        if not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"factor must be a positive int, got {self.factor!r}")
        x, added = _add_batch(x, "x")
        f, k = self.factor, self.kernel_size
        h, w = x.shape[1:3]
        target = (f * h, f * w) if output_hw is None else tuple(output_hw)

        if self.mode == "unpool":
            if indices is None:
                raise ValueError('indices are required for mode="unpool" (from MaxPoolWithIndices)')
            y = MaxUnpool(window=f, name="unpool")(x, indices, target)
            y = Conv2d(self.features, k, name="conv")(y)
        elif self.mode == "upsample_conv":
            if target != (f * h, f * w):
                raise ValueError(
                    f'output_hw {target} is not reachable with mode="upsample_conv" '
                    f"(which gives factor * input = {(f * h, f * w)})"
                )
            y = UpsampleConv(self.features, f, self.method, k, name="upsample_conv")(x)
        else:
            padding = max(0, math.ceil((k - f) / 2))
            base = (f * (h - 1) + k - 2 * padding, f * (w - 1) + k - 2 * padding)
            output_padding = (target[0] - base[0], target[1] - base[1])
            if not all(0 <= a < f for a in output_padding):
                raise ValueError(
                    f'output_hw {target} is not reachable with mode="transposed_conv" '
                    f"(kernel {k}, stride {f}, padding {padding} reach "
                    f"{base} to {(base[0] + f - 1, base[1] + f - 1)})"
                )
            y = ConvTranspose2d(
                self.features,
                k,
                stride=f,
                padding=padding,
                output_padding=output_padding,
                name="conv_transpose",
            )(x)
        return _drop_batch(y, added)
