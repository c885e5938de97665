"""Convolutional building blocks written from their definitions.

Everything here is a pure function of arrays: images are NHWC
(``[batch, height, width, channels]``) and kernels are HWIO
(``[kernel_h, kernel_w, in_channels, out_channels]``), where "in" always means
the channels of the array the op is applied to. Strides, paddings, window
sizes and scales are Python ints (or ``(h, w)`` pairs of ints); they fix the
output shape, so under ``jax.jit`` they must be static (closed over or marked
``static_argnums``). All argument checks look only at static shapes and values,
so they run at trace time and raise the same ``ValueError`` under ``jit``,
``vmap`` and ``grad``. Nothing reduces over the batch.

``conv2d`` is the frameworks' cross-correlation; ``conv_transpose2d`` is written
as the lectures define it (each input element scatters the scaled kernel) and
is checked against its two equivalent forms, the adjoint ``C^T`` of ``conv2d``
(``conv_matrix``) and a direct convolution of the zero-inserted input with the
flipped kernel. Pooling, max-unpooling with indices, upsampling and the
lectures' activations complete the set.

References:
  V. Dumoulin and F. Visin, "A guide to convolution arithmetic for deep
  learning", arXiv:1603.07285, 2016.
  M. D. Zeiler and R. Fergus, "Visualizing and Understanding Convolutional
  Networks", ECCV 2014 (max-unpooling with remembered "switches").
  I. Goodfellow et al., "Maxout Networks", ICML 2013.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "UPSAMPLE_METHODS",
    "avg_pool",
    "conv2d",
    "conv_matrix",
    "conv_output_size",
    "conv_transpose",
    "conv_transpose2d",
    "conv_transpose_output_size",
    "elu",
    "leaky_relu",
    "max_pool_with_indices",
    "max_unpool",
    "maxout",
    "relu",
    "sigmoid",
    "tanh",
    "upsample",
]

UPSAMPLE_METHODS = ("nearest", "bilinear")

IntOrPair = int | Sequence[int]

# The public ops check their (static) arguments in Python, then call a private
# jitted body with the arguments normalised to hashable tuples: eager calls
# compile once per shape instead of once per primitive, and inside an outer
# jit the inner jit is simply inlined.


# --- Argument checks (static, so they also run under jit).


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _pair(value: IntOrPair, name: str, minimum: int) -> tuple[int, int]:
    """Returns ``value`` as an ``(h, w)`` pair of ints ``>= minimum``."""
    is_pair = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    if not (_is_int(value) or is_pair and all(_is_int(v) for v in value)):
        raise ValueError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    pair = (int(value), int(value)) if _is_int(value) else (int(value[0]), int(value[1]))
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def _int(value, name: str, minimum: int) -> int:
    """Returns ``value`` as an int ``>= minimum``."""
    if not _is_int(value):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_rank(array, rank: int, name: str, layout: str) -> None:
    if jnp.ndim(array) != rank:
        raise ValueError(f"{name} must have rank {rank} ({layout}), got shape {jnp.shape(array)}")


def _check_kernel(kernel, rank: int, layout: str) -> None:
    _check_rank(kernel, rank, "kernel", layout)
    if min(kernel.shape[:2]) < 1:
        raise ValueError(f"kernel must have a spatial size of at least 1 x 1, got shape {kernel.shape}")


def _check_image_and_kernel(x, kernel) -> None:
    _check_rank(x, 4, "x", "NHWC")
    _check_kernel(kernel, 4, "HWIO")
    if x.shape[3] != kernel.shape[2]:
        raise ValueError(
            f"kernel input channels ({kernel.shape[2]}, axis 2 of HWIO kernel of shape "
            f"{kernel.shape}) must equal the channels of x ({x.shape[3]})"
        )


# --- Output sizes.


def conv_output_size(i: int, k: int, s: int = 1, p: int = 0) -> int:
    """Spatial output size of ``conv2d`` along one axis (input ``i``, kernel ``k``, stride ``s``, padding ``p``).

    ``o = floor((i + 2p - k) / s) + 1`` (Dumoulin & Visin, relationship 6), a Python int.

    Raises:
      ValueError: if an argument is not a non-negative int (positive for
        ``i``, ``k``, ``s``) or the kernel is larger than the padded input.
    """
    i, k, s, p = _int(i, "i", 1), _int(k, "k", 1), _int(s, "s", 1), _int(p, "p", 0)
    if k > i + 2 * p:
        raise ValueError(f"k: kernel size {k} is larger than the padded input size i + 2p = {i + 2 * p}")
    return (i + 2 * p - k) // s + 1


def conv_transpose_output_size(i: int, k: int, s: int = 1, p: int = 0, output_padding: int = 0) -> int:
    """Spatial output size of ``conv_transpose2d`` along one axis.

    ``o' = s (i' - 1) + k - 2p + output_padding`` (Dumoulin & Visin,
    relationship 14). ``output_padding`` (``0 <= a < s``) picks which of the
    ``s`` input sizes that ``conv2d`` maps to ``i'`` is recovered.

    Raises:
      ValueError: on non-int or out-of-range arguments, or when the cropping
        ``p`` leaves no output.
    """
    i, k, s, p = _int(i, "i", 1), _int(k, "k", 1), _int(s, "s", 1), _int(p, "p", 0)
    a = _int(output_padding, "output_padding", 0)
    if a >= s:
        raise ValueError(f"output_padding must be smaller than the stride {s}, got {output_padding}")
    o = s * (i - 1) + k - 2 * p + a
    if o < 1:
        raise ValueError(f"p: padding {p} crops away the whole output (s(i-1) + k - 2p + output_padding = {o})")
    return o


# --- Convolution and transposed convolution.


def conv2d(x: jax.Array, kernel: jax.Array, stride: IntOrPair = 1, padding: IntOrPair = 0) -> jax.Array:
    """2-D cross-correlation, as deep-learning frameworks define "convolution".

    ``y[n, r, c, o] = sum_{a, b, i} x_pad[n, s*r + a, s*c + b, i] * k[a, b, i, o]``
    where ``x_pad`` is ``x`` with ``padding`` zeros on every border; the kernel
    is not flipped. Computed by gathering the ``kh * kw`` strided shifts of the
    padded input (im2col) and contracting them with the kernel.

    Args:
      x: ``[N, H, W, C]``. kernel: ``[kh, kw, C, O]``.
      stride: int or ``(sh, sw)``, >= 1. padding: int or ``(ph, pw)`` zeros on both sides, >= 0.

    Returns:
      ``[N, oh, ow, O]`` with ``oh = conv_output_size(H, kh, sh, ph)`` (same for the width).

    Raises:
      ValueError: wrong ranks, mismatched channels, an empty image or kernel,
        non-positive stride, negative padding, or a kernel larger than the padded input.
    """
    _check_image_and_kernel(x, kernel)
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    h, w = x.shape[1:3]
    kh, kw = kernel.shape[:2]
    if min(h, w, kh, kw) < 1:
        raise ValueError(f"x and kernel: spatial sizes {(h, w)} and {(kh, kw)} must be at least 1x1")
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError(
            f"kernel: spatial size {(kh, kw)} is larger than the padded input "
            f"{(h + 2 * ph, w + 2 * pw)} (x spatial size {(h, w)}, padding {(ph, pw)})"
        )
    return _conv2d(x, kernel, (sh, sw), (ph, pw))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _conv2d(x, kernel, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    h, w = x.shape[1:3]
    kh, kw = kernel.shape[:2]
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    x_pad = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    # patches[n, r, c, a, b, i] = x_pad[n, s*r + a, s*c + b, i]
    patches = jnp.stack(
        [
            jnp.stack(
                [x_pad[:, a : a + sh * (oh - 1) + 1 : sh, b : b + sw * (ow - 1) + 1 : sw, :] for b in range(kw)],
                axis=3,
            )
            for a in range(kh)
        ],
        axis=3,
    )  # [N, oh, ow, kh, kw, C]
    return jnp.einsum("nrcabi,abio->nrco", patches, kernel)


def conv_transpose2d(
    x: jax.Array,
    kernel: jax.Array,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    output_padding: IntOrPair = 0,
) -> jax.Array:
    """Transposed ("fractionally strided") convolution from its definition.

    Every input element ``x[n, r, c, :]`` scales the whole kernel and adds it
    into the output with its top-left corner at ``(s*r, s*c)`` -- the strides
    are specified for the output, not the input:

        full[n, s*r + a, s*c + b, o] += sum_i x[n, r, c, i] * k[a, b, i, o]

    ``full`` gets ``output_padding`` extra zero rows/columns at the bottom/right
    and ``padding`` rows/columns are cropped from each border, so
    ``o' = s (i' - 1) + k - 2p + output_padding``.

    This is the adjoint of ``conv2d``: with ``k_fwd = swapaxes(kernel, 2, 3)``,
    it is the VJP of ``x -> conv2d(x, k_fwd, s, p)`` (``C^T y``) for the input
    size picked by ``output_padding``. It also equals a stride-1 ``conv2d`` of
    the input with ``s - 1`` zeros inserted between elements, padded by
    ``k - p - 1`` (a crop when negative; ``+ output_padding`` at the
    bottom/right), with the flipped kernel ``kernel[::-1, ::-1]`` (Dumoulin &
    Visin 2016, relationships 8, 9, 13, 14); and PyTorch's ``ConvTranspose2d``
    with weight ``kernel.transpose(2, 3, 0, 1)``, and
    ``jax.lax.conv_transpose(x, k_fwd, ..., transpose_kernel=True)``.

    Args:
      x: ``[N, H, W, C]``. kernel: ``[kh, kw, C, O]`` (input channels of *this* op first).
      stride: int or ``(sh, sw)``, >= 1. padding: int or pair cropped from each border, >= 0.
      output_padding: int or pair, ``0 <= output_padding < stride``.

    Returns:
      ``[N, oh, ow, O]``, ``oh = conv_transpose_output_size(H, kh, sh, ph, output_padding_h)``.

    Raises:
      ValueError: wrong ranks, mismatched channels, non-positive stride,
        negative padding, ``output_padding >= stride``, or an empty output.
    """
    _check_image_and_kernel(x, kernel)
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    ah, aw = _pair(output_padding, "output_padding", 0)
    h, w = x.shape[1:3]
    kh, kw = kernel.shape[:2]
    conv_transpose_output_size(h, kh, sh, ph, ah)  # checks the arguments
    conv_transpose_output_size(w, kw, sw, pw, aw)
    return _conv_transpose2d(x, kernel, (sh, sw), (ph, pw), (ah, aw))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _conv_transpose2d(x, kernel, stride, padding, output_padding):
    (sh, sw), (ph, pw), (ah, aw) = stride, padding, output_padding
    h, w = x.shape[1:3]
    kh, kw = kernel.shape[:2]
    oh = conv_transpose_output_size(h, kh, sh, ph, ah)
    ow = conv_transpose_output_size(w, kw, sw, pw, aw)
    # scaled[n, r, c, a, b, o]: input element (r, c) times the whole kernel.
    scaled = jnp.einsum("nrci,abio->nrcabo", x, kernel)
    zero = jnp.zeros((), scaled.dtype)
    full = None
    for a in range(kh):
        for b in range(kw):
            # Interior padding puts element (r, c) at (s*r, s*c); the low
            # padding shifts it by the kernel offset (a, b).
            placed = lax.pad(
                scaled[:, :, :, a, b, :],
                zero,
                (
                    (0, 0, 0),
                    (a, kh - 1 - a + ah, sh - 1),
                    (b, kw - 1 - b + aw, sw - 1),
                    (0, 0, 0),
                ),
            )  # [N, s(H-1) + kh + ah, s(W-1) + kw + aw, O]
            full = placed if full is None else full + placed
    return full[:, ph : ph + oh, pw : pw + ow, :]


_NHWC = ("NHWC", "HWIO", "NHWC")


def _lax_transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
    """(low, high) padding of the stride-1, ``s``-dilated convolution that ``jax.lax.conv_transpose`` runs.

    ``padding`` is ``"SAME"`` or ``"VALID"`` of the forward convolution (lax's convention, which flax's
    ``ConvTranspose`` uses): SAME pads ``k + s - 2`` in all, ``k - 1`` before when ``s > k - 1``, else half
    rounded up; VALID pads ``k - 1`` before and ``s - 1 + max(k - s, 0)`` after.
    """
    if padding == "SAME":
        total = k + s - 2
        low = k - 1 if s > k - 1 else -(-total // 2)
    else:  # VALID
        total = k + s - 2 + max(k - s, 0)
        low = k - 1
    return low, total - low


def conv_transpose(x: jax.Array, kernel: jax.Array, strides: IntOrPair = 1, padding: str = "SAME") -> jax.Array:
    """``jax.lax.conv_transpose`` (NHWC, HWIO, SAME/VALID: what ``flax.linen.ConvTranspose`` computes) with a
    faster kernel gradient.

    The value and the input gradient are lax's: a stride-1 convolution of
    ``x`` dilated by ``strides`` (``s - 1`` zeros between elements), padded by
    ``low`` before (lax's padding for SAME/VALID), with ``kernel`` as given.
    The kernel gradient,

        dk[a, b, i, o] = sum_{n, r, c} x[n, r, c, i] g[n, low + s*r - a, low + s*c - b, o],

    is the same sum as the weight gradient of a *strided* convolution of the
    output cotangent ``g`` (stride ``s``, low padding ``k - 1 - low``) at
    cotangent ``x``, with the kernel flipped and its channel axes swapped.
    XLA computes the first form as a convolution over the dilated input, which
    XLA:CPU runs much slower than a strided convolution's weight gradient (the
    measurement is in the docs' benchmarks page); this op asks XLA for the
    second. Tested against ``jax.vjp`` of ``lax.conv_transpose``.

    Args:
      x: ``[N, H, W, C]``. kernel: ``[kh, kw, C, O]``.
      strides: int or ``(sh, sw)``, >= 1. padding: ``"SAME"`` or ``"VALID"``.

    Returns:
      ``[N, oh, ow, O]``: ``oh = H * sh`` for SAME, ``(H - 1) * sh + kh`` for VALID (lax's sizes).
    """
    _check_image_and_kernel(x, kernel)
    strides = _pair(strides, "strides", 1)
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    return _conv_transpose(x, kernel, strides, padding)


def _lax_conv_transpose(x, kernel, strides, padding):
    return lax.conv_transpose(x, kernel, strides, padding, dimension_numbers=_NHWC)


_conv_transpose = jax.custom_vjp(_lax_conv_transpose, nondiff_argnums=(2, 3))


def _conv_transpose_fwd(x, kernel, strides, padding):
    return _lax_conv_transpose(x, kernel, strides, padding), (x, kernel)


def _conv_transpose_bwd(strides, padding, residuals, g):
    x, kernel = residuals
    _, x_vjp = jax.vjp(lambda x_: _lax_conv_transpose(x_, kernel, strides, padding), x)
    (dx,) = x_vjp(g)
    # The strided convolution u = conv(g, v) with u[n, r, c, i] = sum g[n, s*r + a' - P, ...] v[a', ..., o, i],
    # a' = k - 1 - a, P = k - 1 - low: its weight gradient at cotangent x is dk flipped and channel-swapped.
    pads = []
    for axis, (k, s) in enumerate(zip(kernel.shape[:2], strides)):
        low = _lax_transpose_padding(k, s, padding)[0]
        before = k - 1 - low
        after = (x.shape[1 + axis] - 1) * s + k - g.shape[1 + axis] - before  # u gets exactly x's size
        pads.append((before, after))
    crop = tuple(slice(max(-lo, 0), g.shape[1 + i] - max(-hi, 0)) for i, (lo, hi) in enumerate(pads))
    g_in = g[:, crop[0], crop[1], :]  # a negative padding is a crop
    pads = [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
    v_shape = (*kernel.shape[:2], kernel.shape[3], kernel.shape[2])  # [kh, kw, O, C]
    _, v_vjp = jax.vjp(
        lambda v: lax.conv_general_dilated(g_in, v, strides, pads, dimension_numbers=_NHWC),
        jnp.zeros(v_shape, kernel.dtype),
    )
    (dv,) = v_vjp(x.astype(g.dtype))
    return dx, jnp.swapaxes(dv[::-1, ::-1], 2, 3).astype(kernel.dtype)


_conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def conv_matrix(
    kernel: jax.Array,
    input_hw: IntOrPair,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
) -> jax.Array:
    """The convolution matrix ``C`` of a single-channel ``conv2d``.

    ``C`` has one row per output pixel and one column per input pixel (both
    flattened row-major), and ``C[r * ow + c, u * W + v] = k[a, b]`` when input
    pixel ``(u, v) = (s*r + a - p, s*c + b - p)``; taps that fall on the zero
    padding are dropped. So ``C @ x.ravel()`` is ``conv2d`` and
    ``C.T @ y.ravel()`` is ``conv_transpose2d`` (with the ``output_padding``
    that restores ``input_hw``). For a 3x3 kernel on a 4x4 input this is the
    lectures' 4 x 16 matrix. The sparsity pattern is built in NumPy, the
    values are gathered from ``kernel``, so it differentiates w.r.t. the kernel.

    Args:
      kernel: ``[kh, kw]``. input_hw: int or ``(H, W)``. stride, padding: as in ``conv2d``.

    Returns:
      ``[oh * ow, H * W]``.
    """
    _check_kernel(kernel, 2, "[kh, kw] single-channel")
    in_h, in_w = _pair(input_hw, "input_hw", 1)
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    kh, kw = kernel.shape
    if kh > in_h + 2 * ph or kw > in_w + 2 * pw:
        raise ValueError(
            f"kernel: spatial size {(kh, kw)} is larger than the padded input {(in_h + 2 * ph, in_w + 2 * pw)}"
        )
    oh, ow = conv_output_size(in_h, kh, sh, ph), conv_output_size(in_w, kw, sw, pw)
    r, c, a, b = np.meshgrid(np.arange(oh), np.arange(ow), np.arange(kh), np.arange(kw), indexing="ij")
    u, v = sh * r + a - ph, sw * c + b - pw
    inside = (u >= 0) & (u < in_h) & (v >= 0) & (v < in_w)
    rows = (r * ow + c)[inside]
    cols = (u * in_w + v)[inside]
    values = kernel[a[inside], b[inside]]
    return jnp.zeros((oh * ow, in_h * in_w), kernel.dtype).at[rows, cols].set(values)


# --- Pooling and unpooling.


def _pool_geometry(x, window, stride):
    """Checks pooling arguments; returns ``(wh, ww), (sh, sw)``."""
    _check_rank(x, 4, "x", "NHWC")
    wh, ww = _pair(window, "window", 1)
    sh, sw = _pair(window if stride is None else stride, "stride", 1)
    h, w = x.shape[1:3]
    if wh > h or ww > w:
        raise ValueError(f"window {(wh, ww)} is larger than the spatial size of x {(h, w)}")
    return (wh, ww), (sh, sw)


def _windows(x, window, stride):
    """Strided windows of ``x``: ``[N, oh, ow, C, wh * ww]`` and their offsets."""
    (wh, ww), (sh, sw) = window, stride
    h, w = x.shape[1:3]
    oh, ow = (h - wh) // sh + 1, (w - ww) // sw + 1
    offsets = [(a, b) for a in range(wh) for b in range(ww)]
    windows = jnp.stack(
        [x[:, a : a + sh * (oh - 1) + 1 : sh, b : b + sw * (ow - 1) + 1 : sw, :] for a, b in offsets],
        axis=-1,
    )
    return windows, np.asarray(offsets)


def max_pool_with_indices(
    x: jax.Array, window: IntOrPair = 2, stride: IntOrPair | None = None
) -> tuple[jax.Array, jax.Array]:
    """Max pooling (no padding) that also returns where each maximum was.

    ``pooled[n, r, c, ch] = max_{a < wh, b < ww} x[n, s*r + a, s*c + b, ch]``.
    ``indices`` holds the flat position ``u * W + v`` of that maximum within
    its ``H x W`` plane (per example and channel, as PyTorch's
    ``return_indices``); ties go to the first position in row-major window
    order. Feed both to ``max_unpool`` to put the maxima back (Zeiler & Fergus
    2014's "switches").

    Args:
      x: ``[N, H, W, C]``. window: int or ``(wh, ww)``.
      stride: int or pair; defaults to ``window`` (non-overlapping windows).

    Returns:
      ``(pooled, indices)``, both ``[N, oh, ow, C]`` with
      ``oh = floor((H - wh) / sh) + 1``; ``indices`` is int32.
    """
    return _max_pool_with_indices(x, *_pool_geometry(x, window, stride))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _max_pool_with_indices(x, window, stride):
    windows, offsets = _windows(x, window, stride)  # [N, oh, ow, C, K]
    (sh, sw), w = stride, x.shape[2]
    oh, ow = windows.shape[1:3]
    best = jnp.argmax(windows, axis=-1)  # [N, oh, ow, C]
    pooled = jnp.take_along_axis(windows, best[..., None], axis=-1)[..., 0]
    rows = sh * np.arange(oh)[:, None, None] + jnp.asarray(offsets[:, 0])[best]
    cols = sw * np.arange(ow)[None, :, None] + jnp.asarray(offsets[:, 1])[best]
    indices = (rows * w + cols).astype(jnp.int32)
    return pooled, indices


def max_unpool(pooled: jax.Array, indices: jax.Array, output_shape: Sequence[int]) -> jax.Array:
    """Inverse of max pooling up to the lost values: maxima back in place.

    ``out`` is zero except ``out[n, u, v, ch] = pooled[n, r, c, ch]`` where
    ``indices[n, r, c, ch] == u * W + v`` (as returned by
    ``max_pool_with_indices``). Indices outside ``[0, H * W)`` are dropped
    (their values cannot be checked at trace time). With overlapping windows
    two windows can name the same position; both carry the same value.

    Args:
      pooled: ``[N, oh, ow, C]``. indices: integer array of the same shape.
      output_shape: ``(H, W)`` or the full ``(N, H, W, C)`` of the pooled input.

    Returns:
      ``[N, H, W, C]``.
    """
    _check_rank(pooled, 4, "pooled", "NHWC")
    if jnp.shape(indices) != pooled.shape:
        raise ValueError(f"indices must have the shape of pooled {pooled.shape}, got {jnp.shape(indices)}")
    if not jnp.issubdtype(jnp.result_type(indices), jnp.integer):
        raise ValueError(f"indices must be integers, got dtype {jnp.result_type(indices)}")
    n, oh, ow, c = pooled.shape
    shape = tuple(output_shape) if isinstance(output_shape, Sequence) else None
    if shape is None or len(shape) not in (2, 4) or not all(_is_int(d) for d in shape):
        raise ValueError(f"output_shape must be (H, W) or (N, H, W, C) ints, got {output_shape!r}")
    if len(shape) == 4 and (shape[0], shape[3]) != (n, c):
        raise ValueError(f"output_shape {shape} must keep the batch and channels of pooled {pooled.shape}")
    h, w = (shape[1], shape[2]) if len(shape) == 4 else shape
    if h < oh or w < ow:
        raise ValueError(f"output_shape spatial size {(h, w)} is smaller than pooled's {(oh, ow)}")
    return _max_unpool(pooled, indices, (int(h), int(w)))


@functools.partial(jax.jit, static_argnums=(2,))
def _max_unpool(pooled, indices, output_hw):
    n, _, _, c = pooled.shape
    h, w = output_hw
    batch = np.arange(n)[:, None, None, None]
    channel = np.arange(c)[None, None, None, :]
    flat = jnp.zeros((n, h * w, c), pooled.dtype)
    flat = flat.at[batch, indices, channel].set(pooled, mode="drop")
    return flat.reshape(n, h, w, c)


def avg_pool(x: jax.Array, window: IntOrPair = 2, stride: IntOrPair | None = None) -> jax.Array:
    """Average pooling without padding: the mean of each ``wh x ww`` window of ``x`` ``[N, H, W, C]``.

    ``window``: int or pair; ``stride`` defaults to ``window``. Returns ``[N, oh, ow, C]``,
    ``oh = floor((H - wh) / sh) + 1``.
    """
    return _avg_pool(x, *_pool_geometry(x, window, stride))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _avg_pool(x, window, stride):
    windows, _ = _windows(x, window, stride)
    return jnp.mean(windows, axis=-1)


# --- Interpolation.


def _linear_taps(in_size: int, out_size: int):
    """Half-pixel-centre linear interpolation taps along one axis.

    Output pixel ``j`` samples input coordinate ``(j + 0.5) * in/out - 0.5``,
    clamped to ``[0, in - 1]`` (so borders replicate the edge pixel).
    """
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    src = np.clip(src, 0.0, in_size - 1)
    lo = np.floor(src).astype(np.int32)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


def upsample(x: jax.Array, scale: IntOrPair = 2, method: str = "nearest") -> jax.Array:
    """Upsamples ``[N, H, W, C]`` by an integer factor per spatial axis.

    ``nearest`` repeats each pixel ``scale`` times along each axis.
    ``bilinear`` interpolates linearly along H then W between the two nearest
    input pixel centres (half-pixel centres, edges replicated), i.e. a
    distance-weighted average of the 4 nearest neighbours. Both agree with
    ``jax.image.resize`` to the same size (``align_corners=False`` in
    PyTorch terms).

    Args:
      x: ``[N, H, W, C]``. scale: positive int or ``(sh, sw)``.
      method: one of ``UPSAMPLE_METHODS`` = ``("nearest", "bilinear")``.

    Returns:
      ``[N, sh * H, sw * W, C]``.
    """
    _check_rank(x, 4, "x", "NHWC")
    sh, sw = _pair(scale, "scale", 1)
    if method not in UPSAMPLE_METHODS:
        raise ValueError(f"method must be one of {UPSAMPLE_METHODS}, got {method!r}")
    return _upsample(x, (sh, sw), method)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _upsample(x, scale, method):
    sh, sw = scale
    if method == "nearest":
        return jnp.repeat(jnp.repeat(x, sh, axis=1), sw, axis=2)
    for axis, s in ((1, sh), (2, sw)):  # along H, then W
        lo, hi, frac = _linear_taps(x.shape[axis], s * x.shape[axis])
        frac = jnp.asarray(frac, x.dtype).reshape([-1 if i == axis else 1 for i in range(4)])
        x = jnp.take(x, lo, axis) * (1 - frac) + jnp.take(x, hi, axis) * frac
    return x


# --- Activations compared in the lectures.


def sigmoid(x: jax.Array) -> jax.Array:
    """``1 / (1 + exp(-x))``; saturates (gradient -> 0) for large ``|x|``."""
    return jax.nn.sigmoid(x)


def tanh(x: jax.Array) -> jax.Array:
    """``tanh(x) = 2 sigmoid(2x) - 1``; zero-centred but also saturates."""
    return jnp.tanh(x)


def relu(x: jax.Array) -> jax.Array:
    """``max(0, x)``; gradient 1 for ``x > 0`` and 0 for ``x < 0`` (0 at 0)."""
    return jax.nn.relu(x)


def leaky_relu(x: jax.Array, slope: float = 0.1) -> jax.Array:
    """``max(slope * x, x)`` for ``0 <= slope <= 1``; the lectures use 0.1.

    Note ``jax.nn.leaky_relu`` defaults to a slope of 0.01.
    """
    return jax.nn.leaky_relu(x, negative_slope=slope)


def elu(x: jax.Array, alpha: float = 1.0) -> jax.Array:
    """``x`` for ``x >= 0`` and ``alpha (exp(x) - 1)`` for ``x < 0``."""
    return jax.nn.elu(x, alpha=alpha)


def maxout(x: jax.Array, pieces: int) -> jax.Array:
    """Maxout over groups of ``pieces`` consecutive features (Goodfellow 2013).

    With ``x = W h + b`` holding ``units * pieces`` linear pieces laid out as
    ``[..., units, pieces]`` (flattened), returns
    ``out[..., u] = max_j x[..., u * pieces + j]``, i.e.
    ``max(w_1^T h + b_1, ..., w_k^T h + b_k)`` per unit.

    Args:
      x: ``[..., units * pieces]``. pieces: number of linear pieces per unit, >= 1.

    Returns:
      ``[..., units]``.
    """
    if not _is_int(pieces) or pieces < 1:
        raise ValueError(f"pieces must be a positive int, got {pieces!r}")
    if jnp.ndim(x) < 1 or x.shape[-1] % pieces:
        raise ValueError(f"x: last axis ({jnp.shape(x)[-1:] or 'none'}) must be a multiple of pieces={pieces}")
    return jnp.max(x.reshape(*x.shape[:-1], x.shape[-1] // pieces, pieces), axis=-1)
