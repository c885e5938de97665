"""Tests for vae_jax.ops: every op against an independent computation.

References used: ``jax.lax`` convolutions, ``flax.linen.ConvTranspose``,
``jax.image.resize``, NumPy brute-force loops, the lectures' hand-worked
examples and closed-form derivatives.
"""

import json
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vae_jax import ops

DN = ("NHWC", "HWIO", "NHWC")
ATOL = 1e-4


def lax_conv(x, kernel, stride, padding):
    return lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2, dimension_numbers=DN)


def random_case(seed):
    """A random transposed-convolution configuration: (x, kernel, s, p, a)."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 5))
    s = int(rng.integers(1, 4))
    p = int(rng.integers(0, k))  # k - p - 1 >= 0
    a = int(rng.integers(0, s))  # output_padding < stride
    h, w = (int(v) for v in rng.integers(1, 6, size=2))
    c_in, c_out = (int(v) for v in rng.integers(1, 4, size=2))
    if s * (h - 1) + k - 2 * p + a < 1 or s * (w - 1) + k - 2 * p + a < 1:
        p = 0
    x = jnp.asarray(rng.normal(size=(2, h, w, c_in)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, c_in, c_out)), jnp.float32)
    return x, kernel, s, p, a


def numpy_transposed_conv(x, kernel, s, p, a):
    """The definition, as loops: scatter the scaled kernel, then crop."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    n, h, w, _ = x.shape
    kh, kw, _, c_out = kernel.shape
    full = np.zeros((n, s * (h - 1) + kh + a, s * (w - 1) + kw + a, c_out))
    for r in range(h):
        for c in range(w):
            full[:, s * r : s * r + kh, s * c : s * c + kw, :] += np.einsum("ni,abio->nabo", x[:, r, c], kernel)
    oh, ow = s * (h - 1) + kh - 2 * p + a, s * (w - 1) + kw - 2 * p + a
    return full[:, p : p + oh, p : p + ow]


def zero_insertion_conv(x, kernel, s, p, a):
    """Dumoulin & Visin: zeros between inputs, pad k - p - 1, flipped kernel."""
    x = np.asarray(x)
    n, h, w, c = x.shape
    k = kernel.shape[0]
    stretched = np.zeros((n, s * (h - 1) + 1, s * (w - 1) + 1, c), np.float32)
    stretched[:, ::s, ::s] = x
    q = k - p - 1
    padded = np.pad(stretched, ((0, 0), (q, q + a), (q, q + a), (0, 0)))
    return lax_conv(jnp.asarray(padded), kernel[::-1, ::-1], 1, 0)


# ----------------------------------------------------------------------------
# Worked examples.
# ----------------------------------------------------------------------------


def nhwc(rows):
    return jnp.asarray(rows, jnp.float32)[None, :, :, None]


def hwio(rows):
    return jnp.asarray(rows, jnp.float32)[:, :, None, None]


def test_lecture_worked_example_unpooling_by_transposed_conv():
    out = ops.conv_transpose2d(nhwc([[1, 3], [2, 4]]), hwio([[1, 1, 1], [1, -1, 1], [1, 1, 1]]))
    expected = [[1, 4, 4, 3], [3, 8, 4, 7], [3, 6, 2, 7], [2, 6, 6, 4]]
    np.testing.assert_array_equal(out[0, :, :, 0], expected)


def test_worked_example_stride_2():
    out = ops.conv_transpose2d(nhwc([[0, 1], [2, 3]]), hwio([[4, 5], [6, 7]]), stride=2)
    expected = [[0, 0, 4, 5], [0, 0, 6, 7], [8, 10, 12, 15], [12, 14, 18, 21]]
    np.testing.assert_array_equal(out[0, :, :, 0], expected)


def test_conv_matrix_is_the_lectures_4_by_16_matrix():
    w = np.arange(1.0, 10.0).reshape(3, 3)
    row = np.concatenate([w[0], [0], w[1], [0], w[2], [0], np.zeros(4)])  # first row on the slide
    expected = np.stack([row, np.roll(row, 1), np.roll(row, 4), np.roll(row, 5)])
    c = ops.conv_matrix(jnp.asarray(w, jnp.float32), (4, 4))
    chex.assert_shape(c, (4, 16))
    np.testing.assert_array_equal(c, expected)


# ----------------------------------------------------------------------------
# conv2d and conv_transpose2d against lax, flax, NumPy and each other.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_conv2d_matches_lax_values_and_gradients(seed):
    x_t, kernel_t, s, p, _ = random_case(seed)
    rng = np.random.default_rng(100 + seed)
    k = kernel_t.shape[0]
    h, w = int(rng.integers(k, k + 6)), int(rng.integers(k, k + 6))
    x = jnp.asarray(rng.normal(size=(2, h, w, kernel_t.shape[2])), jnp.float32)
    out = ops.conv2d(x, kernel_t, s, p)
    ref = lax_conv(x, kernel_t, s, p)
    chex.assert_equal_shape([out, ref])
    np.testing.assert_allclose(out, ref, atol=ATOL)
    cotangent = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    grads = jax.grad(lambda a, b: jnp.sum(ops.conv2d(a, b, s, p) * cotangent), (0, 1))(x, kernel_t)
    ref_grads = jax.grad(lambda a, b: jnp.sum(lax_conv(a, b, s, p) * cotangent), (0, 1))(x, kernel_t)
    chex.assert_trees_all_close(grads, ref_grads, atol=ATOL)


@pytest.mark.parametrize("seed", range(12))
def test_conv_transpose2d_all_definitions_agree(seed):
    x, kernel, s, p, a = random_case(seed)
    out = ops.conv_transpose2d(x, kernel, s, p, a)
    h, w = x.shape[1:3]
    kh = kernel.shape[0]
    chex.assert_shape(
        out,
        (
            2,
            ops.conv_transpose_output_size(h, kh, s, p, a),
            ops.conv_transpose_output_size(w, kh, s, p, a),
            kernel.shape[3],
        ),
    )
    # The definition as NumPy loops.
    np.testing.assert_allclose(out, numpy_transposed_conv(x, kernel, s, p, a), atol=ATOL)
    # (b) zero insertion + padding k - p - 1 + flipped kernel.
    np.testing.assert_allclose(out, zero_insertion_conv(x, kernel, s, p, a), atol=ATOL)
    # (a) the VJP of conv2d w.r.t. its input (C^T), for our conv2d and lax's.
    forward_kernel = jnp.swapaxes(kernel, 2, 3)
    primal = jnp.zeros(out.shape[:3] + (kernel.shape[3],))
    for conv in (ops.conv2d, lax_conv):
        y, vjp = jax.vjp(lambda v: conv(v, forward_kernel, s, p), primal)
        chex.assert_equal_shape([y, x])
        np.testing.assert_allclose(out, vjp(x)[0], atol=ATOL)
    # jax.lax.conv_transpose, with the forward kernel (transpose_kernel) and the flipped one.
    ref_grad_style = lax.conv_transpose(
        x, forward_kernel, (s, s), [(kh - p - 1, kh - p - 1 + a)] * 2, dimension_numbers=DN, transpose_kernel=True
    )
    ref_direct = lax.conv_transpose(
        x, kernel[::-1, ::-1], (s, s), [(kh - p - 1, kh - p - 1 + a)] * 2, dimension_numbers=DN
    )
    np.testing.assert_allclose(out, ref_grad_style, atol=ATOL)
    np.testing.assert_allclose(out, ref_direct, atol=ATOL)


@pytest.mark.parametrize("transpose_kernel", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_conv_transpose2d_matches_flax_conv_transpose(seed, transpose_kernel):
    x, kernel, s, p, a = random_case(20 + seed)
    k = kernel.shape[0]
    layer = nn.ConvTranspose(
        kernel.shape[3],
        (k, k),
        strides=(s, s),
        use_bias=False,
        padding=[(k - p - 1, k - p - 1 + a)] * 2,
        transpose_kernel=transpose_kernel,
    )
    # flax's default kernel is the flipped one; with transpose_kernel=True it
    # is the forward convolution's kernel (channels swapped).
    flax_kernel = jnp.swapaxes(kernel, 2, 3) if transpose_kernel else kernel[::-1, ::-1]
    ref = layer.apply({"params": {"kernel": flax_kernel}}, x)
    np.testing.assert_allclose(ops.conv_transpose2d(x, kernel, s, p, a), ref, atol=ATOL)


@pytest.mark.parametrize("seed", range(6))
def test_conv_transpose2d_gradients_match_lax(seed):
    x, kernel, s, p, a = random_case(40 + seed)
    k = kernel.shape[0]

    def reference(v, w):
        return lax.conv_transpose(v, w[::-1, ::-1], (s, s), [(k - p - 1, k - p - 1 + a)] * 2, dimension_numbers=DN)

    out_shape = jax.eval_shape(reference, x, kernel).shape
    cotangent = jnp.asarray(np.random.default_rng(seed).normal(size=out_shape), jnp.float32)
    grads = jax.grad(lambda v, w: jnp.sum(ops.conv_transpose2d(v, w, s, p, a) * cotangent), (0, 1))(x, kernel)
    ref_grads = jax.grad(lambda v, w: jnp.sum(reference(v, w) * cotangent), (0, 1))(x, kernel)
    chex.assert_trees_all_close(grads, ref_grads, atol=ATOL)


def test_stride_and_padding_pairs_act_per_axis():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 5, 6, 2)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 2, 2, 3)), jnp.float32)
    ref = lax.conv_general_dilated(x, kernel, (2, 1), [(1, 1), (0, 0)], dimension_numbers=DN)
    np.testing.assert_allclose(ops.conv2d(x, kernel, (2, 1), (1, 0)), ref, atol=ATOL)
    out = ops.conv_transpose2d(x, kernel, (2, 3), (1, 0), (1, 2))
    ref = lax.conv_transpose(x, kernel[::-1, ::-1], (2, 3), [(1, 2), (1, 3)], dimension_numbers=DN)
    np.testing.assert_allclose(out, ref, atol=ATOL)


# ----------------------------------------------------------------------------
# Output sizes and the convolution matrix.
# ----------------------------------------------------------------------------


def test_output_size_formulas_match_actual_shapes():
    """Over a grid of (i, k, s, p), via jax.eval_shape (no compute)."""
    checked = 0
    for i in range(1, 8):
        for k in range(1, 5):
            for s in range(1, 4):
                for p in range(0, 3):
                    kernel = jax.ShapeDtypeStruct((k, k, 1, 1), jnp.float32)
                    if k <= i + 2 * p:
                        x = jax.ShapeDtypeStruct((1, i, i, 1), jnp.float32)
                        o = ops.conv_output_size(i, k, s, p)
                        got = jax.eval_shape(lambda v, w: ops.conv2d(v, w, s, p), x, kernel).shape
                        ref = jax.eval_shape(lambda v, w: lax_conv(v, w, s, p), x, kernel).shape
                        assert got == ref == (1, o, o, 1)
                        checked += 1
                    for a in range(s):
                        o = s * (i - 1) + k - 2 * p + a
                        if o < 1:
                            continue
                        x = jax.ShapeDtypeStruct((1, i, i, 1), jnp.float32)
                        got = jax.eval_shape(lambda v, w: ops.conv_transpose2d(v, w, s, p, a), x, kernel).shape
                        assert got == (1, o, o, 1)
                        assert ops.conv_transpose_output_size(i, k, s, p, a) == o
                        checked += 1
    assert checked > 300


def test_conv_output_size_inverts_transposed_size():
    # conv2d maps o' back to i' for every output_padding a < s.
    for i in range(1, 6):
        for k in range(1, 5):
            for s in range(1, 4):
                for p in range(0, k):
                    for a in range(s):
                        o = s * (i - 1) + k - 2 * p + a
                        if o >= 1 and k <= o + 2 * p:
                            assert ops.conv_output_size(o, k, s, p) == i


@pytest.mark.parametrize("hw,k,s,p", [((4, 4), 3, 1, 0), ((5, 6), 3, 2, 1), ((7, 5), 2, 3, 0), ((6, 6), 4, 2, 2)])
def test_conv_matrix_is_conv2d_and_its_transpose_is_conv_transpose2d(hw, k, s, p):
    rng = np.random.default_rng(sum(hw) + k)
    kernel = jnp.asarray(rng.normal(size=(k, k)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(1,) + hw + (1,)), jnp.float32)
    c = ops.conv_matrix(kernel, hw, s, p)
    y = lax_conv(x, kernel[:, :, None, None], s, p)
    chex.assert_shape(c, (y.shape[1] * y.shape[2], hw[0] * hw[1]))
    np.testing.assert_allclose(c @ x.ravel(), y.ravel(), atol=ATOL)
    # The Jacobian of the convolution is C.
    jacobian = jax.jacobian(lambda v: lax_conv(v, kernel[:, :, None, None], s, p).ravel())(x)
    np.testing.assert_allclose(c, jacobian.reshape(c.shape), atol=ATOL)
    a = tuple((n + 2 * p - k) % s for n in hw)  # output_padding restoring hw
    back = ops.conv_transpose2d(y, kernel[:, :, None, None], s, p, a)
    chex.assert_shape(back, (1,) + hw + (1,))
    np.testing.assert_allclose(c.T @ y.ravel(), back.ravel(), atol=ATOL)


# ----------------------------------------------------------------------------
# Pooling and unpooling.
# ----------------------------------------------------------------------------


def numpy_max_pool(x, window, stride):
    n, h, w, c = x.shape
    oh, ow = (h - window) // stride + 1, (w - window) // stride + 1
    pooled = np.zeros((n, oh, ow, c), x.dtype)
    indices = np.zeros((n, oh, ow, c), np.int64)
    for b in range(n):
        for ch in range(c):
            for r in range(oh):
                for col in range(ow):
                    best, where = -np.inf, None
                    for u in range(stride * r, stride * r + window):
                        for v in range(stride * col, stride * col + window):
                            if x[b, u, v, ch] > best:  # strict: first maximum wins
                                best, where = x[b, u, v, ch], u * w + v
                    pooled[b, r, col, ch], indices[b, r, col, ch] = best, where
    return pooled, indices


@pytest.mark.parametrize(
    "shape,window,stride", [((2, 6, 6, 3), 2, 2), ((1, 7, 5, 2), 3, 2), ((2, 5, 8, 1), 2, 1), ((1, 9, 9, 2), 3, 3)]
)
def test_max_pool_with_indices_matches_numpy_brute_force(shape, window, stride):
    x = np.random.default_rng(window * 10 + stride).normal(size=shape).astype(np.float32)
    pooled, indices = ops.max_pool_with_indices(jnp.asarray(x), window, stride)
    ref_pooled, ref_indices = numpy_max_pool(x, window, stride)
    chex.assert_shape([pooled, indices], ref_pooled.shape)
    assert indices.dtype == jnp.int32
    np.testing.assert_array_equal(pooled, ref_pooled)
    np.testing.assert_array_equal(indices, ref_indices)
    ref = lax.reduce_window(jnp.asarray(x), -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), "VALID")
    np.testing.assert_array_equal(pooled, ref)


def test_ties_go_to_the_first_position_in_the_window():
    x = jnp.ones((1, 2, 2, 1))
    pooled, indices = ops.max_pool_with_indices(x, 2)
    assert int(indices[0, 0, 0, 0]) == 0 and float(pooled[0, 0, 0, 0]) == 1.0


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2)])
def test_unpool_of_pool_keeps_each_windows_max_at_its_position(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    pooled, indices = ops.max_pool_with_indices(jnp.asarray(x), 2)
    out = np.asarray(ops.max_unpool(pooled, indices, x.shape))
    chex.assert_shape(out, shape)
    n, h, w, c = shape
    for r in range(h // 2):
        for col in range(w // 2):
            win_x = x[:, 2 * r : 2 * r + 2, 2 * col : 2 * col + 2, :].reshape(n, 4, c)
            win_out = out[:, 2 * r : 2 * r + 2, 2 * col : 2 * col + 2, :].reshape(n, 4, c)
            first = win_x.argmax(axis=1)
            expected = np.zeros_like(win_x)
            np.put_along_axis(expected, first[:, None], win_x.max(axis=1, keepdims=True), axis=1)
            np.testing.assert_array_equal(win_out, expected)
    # Rows/columns no window covered (odd sizes) stay zero.
    np.testing.assert_array_equal(out[:, 2 * (h // 2) :], 0)
    np.testing.assert_array_equal(out[:, :, 2 * (w // 2) :], 0)
    # For non-negative maps, pooling the unpooled map gives the pooled map back.
    pooled, indices = ops.max_pool_with_indices(jnp.abs(jnp.asarray(x)), 2)
    again, _ = ops.max_pool_with_indices(ops.max_unpool(pooled, indices, x.shape), 2)
    np.testing.assert_array_equal(again, pooled)


def test_max_unpool_accepts_hw_or_full_shape_and_its_gradient_gathers():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    pooled, indices = ops.max_pool_with_indices(x, 2)
    np.testing.assert_array_equal(ops.max_unpool(pooled, indices, (4, 4)), ops.max_unpool(pooled, indices, x.shape))
    # d/dpooled of sum(unpool * g) is g read at the remembered positions.
    g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    grad = jax.grad(lambda v: jnp.sum(ops.max_unpool(v, indices, (4, 4)) * g))(pooled)
    expected = np.take_along_axis(np.asarray(g).reshape(2, 16, 3), np.asarray(indices).reshape(2, 4, 3), axis=1)
    np.testing.assert_allclose(grad, expected.reshape(pooled.shape), atol=1e-6)


def test_max_pool_gradient_matches_lax_reduce_window():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, 6, 2)), jnp.float32)
    g = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 3, 2)), jnp.float32)
    ours = jax.grad(lambda v: jnp.sum(ops.max_pool_with_indices(v, 2)[0] * g))(x)
    ref = jax.grad(lambda v: jnp.sum(lax.reduce_window(v, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") * g))(
        x
    )
    np.testing.assert_allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("window,stride", [(2, 2), (3, 1), (3, 2)])
def test_avg_pool_matches_numpy_and_flax(window, stride):
    x = np.random.default_rng(window).normal(size=(2, 7, 8, 3)).astype(np.float32)
    out = ops.avg_pool(jnp.asarray(x), window, stride)
    oh, ow = (7 - window) // stride + 1, (8 - window) // stride + 1
    expected = (
        np.array(
            [
                [
                    [
                        x[:, stride * r : stride * r + window, stride * c : stride * c + window].mean(axis=(1, 2))
                        for c in range(ow)
                    ]
                    for r in range(oh)
                ]
            ]
        )
        .squeeze(0)
        .transpose(2, 0, 1, 3)
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(out, nn.avg_pool(jnp.asarray(x), (window, window), (stride, stride)), atol=1e-5)


# ----------------------------------------------------------------------------
# Interpolation.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
@pytest.mark.parametrize("scale", [1, 2, 3, (2, 3)])
def test_upsample_matches_jax_image_resize(method, scale):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 4, 3)), jnp.float32)
    sh, sw = (scale, scale) if isinstance(scale, int) else scale
    out = ops.upsample(x, scale, method)
    chex.assert_shape(out, (2, 5 * sh, 4 * sw, 3))
    np.testing.assert_allclose(out, jax.image.resize(x, out.shape, method), atol=1e-5)


def test_bilinear_is_a_distance_weighted_average_of_neighbours():
    # 1-D ramp: interior samples of a linear function are exact.
    x = jnp.arange(4.0)[None, :, None, None] * jnp.ones((1, 1, 2, 1))
    out = ops.upsample(x, (2, 1), "bilinear")[0, :, 0, 0]
    np.testing.assert_allclose(out, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)


# ----------------------------------------------------------------------------
# Activations.
# ----------------------------------------------------------------------------


GRID = jnp.linspace(-5.0, 5.0, 1001)


@pytest.mark.parametrize(
    "fn,value,derivative",
    [
        (ops.sigmoid, lambda x: 1 / (1 + np.exp(-x)), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
        (ops.tanh, np.tanh, lambda x: 1 / np.cosh(x) ** 2),
        (ops.relu, lambda x: np.maximum(0, x), lambda x: (x > 0).astype(float)),
        (ops.leaky_relu, lambda x: np.maximum(0.1 * x, x), lambda x: np.where(x >= 0, 1.0, 0.1)),
        (
            lambda x: ops.elu(x, 0.5),
            lambda x: np.where(x >= 0, x, 0.5 * np.expm1(x)),
            lambda x: np.where(x > 0, 1.0, 0.5 * np.exp(x)),
        ),
    ],
)
def test_activations_and_their_gradients_match_closed_forms(fn, value, derivative):
    grid = np.asarray(GRID, np.float64)
    np.testing.assert_allclose(fn(GRID), value(grid), atol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(fn))(GRID), derivative(grid), atol=1e-5)


def test_leaky_relu_uses_the_lectures_slope():
    np.testing.assert_allclose(ops.leaky_relu(jnp.array([-2.0, 3.0])), [-0.2, 3.0])


def test_maxout_is_the_max_over_groups_of_linear_pieces():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(5, 4)).astype(np.float32)
    weights = rng.normal(size=(4, 3 * 2)).astype(np.float32)  # 3 units x 2 pieces
    z = h @ weights
    out = ops.maxout(jnp.asarray(z), 2)
    chex.assert_shape(out, (5, 3))
    expected = np.stack([np.maximum(z[:, 2 * u], z[:, 2 * u + 1]) for u in range(3)], axis=1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # Pieces (x, 0.1 x) make the leaky ReLU; (x, 0) the ReLU.
    pieces = jnp.stack([GRID, 0.1 * GRID], axis=-1)
    np.testing.assert_allclose(ops.maxout(pieces, 2)[:, 0], ops.leaky_relu(GRID), atol=1e-6)
    # Its gradient flows to the winning piece only.
    grad = jax.grad(lambda v: jnp.sum(ops.maxout(v, 2)))(jnp.array([[1.0, 2.0, 5.0, -1.0]]))
    np.testing.assert_array_equal(grad, [[0, 1, 1, 0]])


def test_against_pytorch_when_installed():
    """PyTorch's ConvTranspose2d, max_pool2d(return_indices), max_unpool2d and
    bilinear interpolate (align_corners=False) as further references."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def to_torch(a):  # NHWC -> NCHW
        return torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy())

    def from_torch(t):
        return t.detach().numpy().transpose(0, 2, 3, 1)

    x, kernel, s, p, a = random_case(60)
    weight = torch.from_numpy(np.asarray(kernel).transpose(2, 3, 0, 1).copy())
    ref = F.conv_transpose2d(to_torch(x), weight, stride=s, padding=p, output_padding=a)
    np.testing.assert_allclose(ops.conv_transpose2d(x, kernel, s, p, a), from_torch(ref), atol=ATOL)

    images = jnp.asarray(np.random.default_rng(61).normal(size=(2, 7, 6, 3)), jnp.float32)
    pooled, indices = ops.max_pool_with_indices(images, 2)
    ref_pooled, ref_indices = F.max_pool2d(to_torch(images), 2, return_indices=True)
    np.testing.assert_array_equal(pooled, from_torch(ref_pooled))
    np.testing.assert_array_equal(indices, from_torch(ref_indices))
    ref_unpooled = F.max_unpool2d(ref_pooled, ref_indices, 2, output_size=(7, 6))
    np.testing.assert_array_equal(ops.max_unpool(pooled, indices, (7, 6)), from_torch(ref_unpooled))

    ref_up = F.interpolate(to_torch(images), scale_factor=3, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ops.upsample(images, 3, "bilinear"), from_torch(ref_up), atol=1e-5)


# ----------------------------------------------------------------------------
# Transformations: jit (one trace), vmap.
# ----------------------------------------------------------------------------


def test_ops_compose_under_jit_and_vmap_without_retracing():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 2, 6, 6, 2)), jnp.float32)  # [V, N, H, W, C]
    kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def pipeline(v, w):
        pooled, indices = ops.max_pool_with_indices(v, 2)
        up = ops.max_unpool(pooled, indices, v.shape)
        y = ops.conv2d(up, w, 2, 1)
        z = ops.conv_transpose2d(y, jnp.swapaxes(w, 2, 3), 2, 1, 1)  # the adjoint: back to 6x6x2
        return ops.upsample(ops.avg_pool(z, 2), 2, "bilinear") + ops.leaky_relu(z)

    batched = jax.vmap(pipeline, in_axes=(0, None))(x, kernel)
    again = jax.vmap(pipeline, in_axes=(0, None))(x + 1, kernel)
    looped = jnp.stack([pipeline(v, kernel) for v in x])
    chex.assert_shape([batched, again, looped], (3, 2, 6, 6, 2))
    np.testing.assert_allclose(batched, looped, atol=ATOL)


# ----------------------------------------------------------------------------
# Argument errors (checked on static shapes, so also under jit).
# ----------------------------------------------------------------------------


X = jnp.zeros((1, 4, 4, 2))
K = jnp.zeros((3, 3, 2, 1))


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: ops.conv2d(X, jnp.zeros((5, 5, 2, 1))),
            r"kernel: spatial size \(5, 5\) is larger than the padded input",
        ),
        (lambda: ops.conv2d(X, K, stride=0), r"stride must be >= 1"),
        (lambda: ops.conv2d(X, K, padding=-1), r"padding must be >= 0"),
        (lambda: ops.conv2d(X, K, stride=1.5), r"stride must be an int or a pair"),
        (lambda: ops.conv2d(X[0], K), r"x must have rank 4 \(NHWC\)"),
        (lambda: ops.conv2d(X, K[0]), r"kernel must have rank 4 \(HWIO\)"),
        (lambda: ops.conv2d(X, jnp.zeros((3, 3, 5, 1))), r"kernel input channels \(5"),
        (lambda: ops.conv_transpose2d(X, K, stride=-1), r"stride must be >= 1"),
        (
            lambda: ops.conv_transpose2d(X, K, stride=2, output_padding=2),
            r"output_padding must be smaller than the stride 2",
        ),
        (
            lambda: ops.conv_transpose2d(jnp.zeros((1, 1, 1, 2)), K, padding=2),
            r"p: padding 2 crops away the whole output",
        ),
        (lambda: ops.conv_output_size(3, 5, 1, 0), r"k: kernel size 5 is larger than the padded input"),
        (lambda: ops.conv_output_size(3, 2, 0, 0), r"s must be >= 1"),
        (lambda: ops.conv_matrix(K, (4, 4)), r"kernel must have rank 2"),
        (lambda: ops.max_pool_with_indices(X, 5), r"window \(5, 5\) is larger than the spatial size of x \(4, 4\)"),
        (lambda: ops.max_pool_with_indices(X, 2, stride=0), r"stride must be >= 1"),
        (
            lambda: ops.max_unpool(X[:, :2, :2], jnp.zeros((1, 2, 2, 1), jnp.int32), (4, 4)),
            r"indices must have the shape of pooled",
        ),
        (lambda: ops.max_unpool(X[:, :2, :2], jnp.zeros((1, 2, 2, 2)), (4, 4)), r"indices must be integers"),
        (
            lambda: ops.max_unpool(X[:, :2, :2], jnp.zeros((1, 2, 2, 2), jnp.int32), (4,)),
            r"output_shape must be \(H, W\)",
        ),
        (
            lambda: ops.max_unpool(X[:, :2, :2], jnp.zeros((1, 2, 2, 2), jnp.int32), (2, 4, 4, 2)),
            r"output_shape .* must keep the batch",
        ),
        (lambda: ops.avg_pool(X, 2, stride=0), r"stride must be >= 1"),
        (lambda: ops.upsample(X, 2, "bicubic"), r"method must be one of \('nearest', 'bilinear'\), got 'bicubic'"),
        (lambda: ops.upsample(X, 0), r"scale must be >= 1"),
        (lambda: ops.maxout(jnp.zeros((2, 5)), 2), r"x: last axis .* must be a multiple of pieces=2"),
        (lambda: ops.maxout(jnp.zeros((2, 4)), 0), r"pieces must be a positive int"),
    ],
)
def test_invalid_arguments_raise_value_errors_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_errors_are_raised_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="kernel: spatial size"):
        jax.jit(lambda v, w: ops.conv2d(v, w))(X, jnp.zeros((5, 5, 2, 1)))
    with pytest.raises(ValueError, match="method must be one of"):
        jax.jit(lambda v: ops.upsample(v, 2, "cubic"))(X)


# ----------------------------------------------------------------------------
# The experiment, end to end.
# ----------------------------------------------------------------------------


def test_building_blocks_experiment_end_to_end(tmp_path):
    from experiments import building_blocks

    assert building_blocks.main(["--workdir", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    names = {figure["file"] for figure in summary["figures"]}
    assert {
        "convolution.png",
        "pooling.png",
        "upsampling.png",
        "unpooling.png",
        "transposed_conv.png",
        "conv_matrix.png",
        "activations.png",
    } <= names
    for name in names:
        path = tmp_path / "run" / name
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checks = summary["checks"]
    assert checks["conv_transpose2d_vs_zero_insertion_stride2_max_abs_diff"] < 1e-4
    assert checks["worked_example_1_stride1_max_abs_error"] == 0
    # Without the kernel flip the zero-insertion "equivalent" is wrong.
    assert checks["zero_insertion_without_flip_sobel_stride2_max_abs_diff"] > 0.1


def test_building_blocks_reads_a_user_image_and_rejects_bad_input(tmp_path, capsys):
    from PIL import Image

    from experiments import building_blocks
    from vae_jax.reports.building_blocks import load_image_file

    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[5:15, 6:18] = (255, 128, 0)
    image_path = tmp_path / "box.png"
    Image.fromarray(rgb).save(image_path)
    gray, _ = load_image_file(str(image_path), max_side=256)
    chex.assert_shape(gray, (20, 24))
    expected = (0.299 * 255 + 0.587 * 128) / 255  # ITU-R 601 luma of the box colour
    np.testing.assert_allclose(gray[10, 10], expected, atol=2 / 255)
    assert gray[0, 0] == 0 and gray.max() <= 1

    bad = [
        (["--image", str(tmp_path / "missing.png"), "--workdir", str(tmp_path / "out")], "--image"),
        (["--image", str(tmp_path), "--workdir", str(tmp_path / "out")], "--image"),
        (["--workdir", str(image_path)], "--workdir"),
    ]
    not_an_image = tmp_path / "text.png"
    not_an_image.write_text("not a picture")
    bad.append((["--image", str(not_an_image), "--workdir", str(tmp_path / "out")], "--image"))
    bad.append((["--max-side", "3", "--workdir", str(tmp_path / "out")], "--max-side"))
    for argv, flag in bad:
        with pytest.raises(SystemExit) as stopped:
            building_blocks.main(argv)
        assert stopped.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"error: {flag}:" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_conv_transpose_values_and_both_gradients_match_lax_conv_transpose(stride, padding):
    # ops.conv_transpose computes its kernel gradient as a strided convolution's weight gradient;
    # the reference is jax.vjp of lax.conv_transpose, over kernel sizes below, at and above the stride.
    dn = ("NHWC", "HWIO", "NHWC")

    def reference(a, b):
        return lax.conv_transpose(a, b, (stride, stride), padding, dimension_numbers=dn)

    @jax.jit  # one program per shape (op-by-op dispatch would compile every primitive separately)
    def values_and_gradients(x, kernel, key):
        ref, ref_vjp = jax.vjp(reference, x, kernel)
        out, out_vjp = jax.vjp(lambda a, b: ops.conv_transpose(a, b, stride, padding), x, kernel)
        g = jax.random.normal(key, ref.shape)
        return ref, out, ref_vjp(g), out_vjp(g)

    for k, (h, w) in [(1, (5, 6)), (2, (7, 7)), (3, (1, 4)), (4, (7, 5)), (5, (3, 3))]:
        kx, kk, kg = jax.random.split(jax.random.key(100 * k + 10 * stride + len(padding)), 3)
        x, kernel = jax.random.normal(kx, (2, h, w, 3)), jax.random.normal(kk, (k, k, 3, 4))
        ref, out, ref_grads, out_grads = values_and_gradients(x, kernel, kg)
        chex.assert_shape(out, ref.shape)
        np.testing.assert_allclose(out, ref, atol=1e-5)
        for mine, theirs in zip(out_grads, ref_grads, strict=True):
            np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="padding must be 'SAME' or 'VALID'"):
        ops.conv_transpose(x, kernel, 2, "CIRCULAR")


def test_conv2d_refuses_an_empty_image_or_kernel():
    # Found by the fuzz test: a 0x0 image with padding used to fail inside conv_output_size, naming its `i`.
    with pytest.raises(ValueError, match=r"x and kernel: spatial sizes \(0, 0\) and \(1, 1\)"):
        ops.conv2d(np.ones((1, 0, 0, 1), np.float32), np.ones((1, 1, 1, 1), np.float32), padding=1)
