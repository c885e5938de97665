"""The building-block ops (and the evaluation helpers), fed random, often malformed arrays and arguments.

Property: each call either returns an array of the documented shape or raises
a ``ValueError`` whose message names one of the function's arguments (and so
says which input is wrong); never another exception from deep inside JAX.
The shapes of the successful calls are checked against the ops' own size
formulas, written out here from their definitions.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vae_jax import ops

DIM = st.integers(0, 5)
SHAPE = st.lists(DIM, min_size=0, max_size=5).map(tuple)
DTYPE = st.sampled_from([np.float32, np.int32, np.bool_])
# Valid ints, bad ints, pairs of either, and things that are not sizes at all.
SIZE_ARG = st.one_of(
    st.integers(-1, 4),
    st.tuples(st.integers(-1, 4), st.integers(-1, 4)),
    st.sampled_from([(1, 2, 3), 1.5, "2", None, True]),
)


def array(shape, dtype):
    return np.ones(shape, dtype)


def _call(fn, arrays: dict, options: dict, use_jit: bool):
    if use_jit:
        return jax.jit(lambda **kw: fn(**kw, **options))(**arrays)
    return fn(**arrays, **options)


def _outcome(fn, arrays: dict, options: dict, use_jit: bool):
    """The call's result, or None after checking that it failed with a ValueError naming an argument."""
    try:
        return _call(fn, arrays, options, use_jit)
    except ValueError as err:
        names = inspect.signature(fn).parameters
        assert any(name in str(err) for name in names), (fn.__name__, str(err))
        return None


def conv_size(i, k, s, p):
    return (i + 2 * p - k) // s + 1


def pair(v):
    return (v, v) if isinstance(v, int) else v


SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None)


@SETTINGS
@given(x_shape=SHAPE, k_shape=SHAPE, dtype=DTYPE, stride=SIZE_ARG, padding=SIZE_ARG, use_jit=st.booleans())
def test_conv2d_on_malformed_inputs(x_shape, k_shape, dtype, stride, padding, use_jit):
    out = _outcome(
        ops.conv2d,
        {"x": array(x_shape, dtype), "kernel": array(k_shape, np.float32)},
        {"stride": stride, "padding": padding},
        use_jit,
    )
    if out is not None:
        (sh, sw), (ph, pw) = pair(stride), pair(padding)
        n, h, w, _ = x_shape
        kh, kw, _, o = k_shape
        assert out.shape == (n, conv_size(h, kh, sh, ph), conv_size(w, kw, sw, pw), o)


@SETTINGS
@given(x_shape=SHAPE, k_shape=SHAPE, stride=SIZE_ARG, padding=SIZE_ARG, output_padding=SIZE_ARG, use_jit=st.booleans())
def test_conv_transpose2d_on_malformed_inputs(x_shape, k_shape, stride, padding, output_padding, use_jit):
    out = _outcome(
        ops.conv_transpose2d,
        {"x": array(x_shape, np.float32), "kernel": array(k_shape, np.float32)},
        {"stride": stride, "padding": padding, "output_padding": output_padding},
        use_jit,
    )
    if out is not None:
        (sh, sw), (ph, pw), (oph, opw) = pair(stride), pair(padding), pair(output_padding)
        n, h, w, _ = x_shape
        kh, kw, _, o = k_shape
        assert out.shape == (n, sh * (h - 1) + kh - 2 * ph + oph, sw * (w - 1) + kw - 2 * pw + opw, o)


@SETTINGS
@given(
    x_shape=SHAPE,
    window=SIZE_ARG,
    stride=st.one_of(st.none(), SIZE_ARG),
    use_jit=st.booleans(),
    pool=st.sampled_from(["max", "avg"]),
)
def test_pooling_on_malformed_inputs(x_shape, window, stride, use_jit, pool):
    fn = ops.max_pool_with_indices if pool == "max" else ops.avg_pool
    out = _outcome(fn, {"x": array(x_shape, np.float32)}, {"window": window, "stride": stride}, use_jit)
    if out is not None:
        pooled = out[0] if pool == "max" else out
        (wh, ww), (sh, sw) = pair(window), pair(window if stride is None else stride)
        n, h, w, c = x_shape
        assert pooled.shape == (n, conv_size(h, wh, sh, 0), conv_size(w, ww, sw, 0), c)


@SETTINGS
@given(
    p_shape=SHAPE,
    i_shape=SHAPE,
    i_dtype=DTYPE,
    output_shape=st.one_of(st.tuples(DIM, DIM), st.tuples(DIM, DIM, DIM, DIM), st.sampled_from([3, "x", (2,)])),
    use_jit=st.booleans(),
)
def test_max_unpool_on_malformed_inputs(p_shape, i_shape, i_dtype, output_shape, use_jit):
    out = _outcome(
        ops.max_unpool,
        {"pooled": array(p_shape, np.float32), "indices": array(i_shape, i_dtype)},
        {"output_shape": output_shape},
        use_jit,
    )
    if out is not None:
        h, w = output_shape[-3:-1] if len(output_shape) == 4 else output_shape
        assert out.shape == (p_shape[0], h, w, p_shape[3])


@SETTINGS
@given(x_shape=SHAPE, scale=SIZE_ARG, method=st.sampled_from(["nearest", "bilinear", "cubic"]), use_jit=st.booleans())
def test_upsample_on_malformed_inputs(x_shape, scale, method, use_jit):
    out = _outcome(ops.upsample, {"x": array(x_shape, np.float32)}, {"scale": scale, "method": method}, use_jit)
    if out is not None:
        (sh, sw) = pair(scale)
        n, h, w, c = x_shape
        assert out.shape == (n, sh * h, sw * w, c)


@SETTINGS
@given(x_shape=SHAPE, pieces=st.one_of(st.integers(-1, 4), st.sampled_from([1.0, "2", None])), use_jit=st.booleans())
def test_maxout_on_malformed_inputs(x_shape, pieces, use_jit):
    out = _outcome(ops.maxout, {"x": array(x_shape, np.float32)}, {"pieces": pieces}, use_jit)
    if out is not None:
        assert out.shape == x_shape[:-1] + (x_shape[-1] // pieces,)


@SETTINGS
@given(k_shape=SHAPE, input_hw=SIZE_ARG, stride=SIZE_ARG, padding=SIZE_ARG)
def test_conv_matrix_on_malformed_inputs(k_shape, input_hw, stride, padding):
    out = _outcome(
        ops.conv_matrix,
        {"kernel": jnp.ones(k_shape)},
        {"input_hw": input_hw, "stride": stride, "padding": padding},
        use_jit=False,
    )
    if out is not None:
        (hh, ww), (sh, sw), (ph, pw) = pair(input_hw), pair(stride), pair(padding)
        kh, kw = k_shape
        assert out.shape == (conv_size(hh, kh, sh, ph) * conv_size(ww, kw, sw, pw), hh * ww)


@SETTINGS
@given(
    shapes=st.lists(SHAPE, min_size=0, max_size=3),
    batch_size=st.one_of(st.integers(-1, 5), st.sampled_from([2.0, None])),
)
def test_map_batches_on_malformed_inputs(shapes, batch_size):
    from vae_jax import evaluate

    data = {f"a{i}": np.ones(shape, np.float32) for i, shape in enumerate(shapes)}
    try:
        out = evaluate.map_batches(lambda batch, i: {k: v * 2 for k, v in batch.items()}, data, batch_size)
    except ValueError as err:
        assert "batch_size" in str(err) or "data" in str(err), str(err)
        return
    for k, v in data.items():  # a batched identity up to the factor 2: every example comes back in place
        np.testing.assert_array_equal(out[k], 2 * v)


def test_evaluation_entry_points_name_the_bad_argument():
    import pytest

    from vae_jax import evaluate

    with pytest.raises(ValueError, match="posterior_means must be \\[N, D\\] with N >= 1, got shape \\(5,\\)"):
        evaluate.active_units(np.zeros(5))
    with pytest.raises(ValueError, match="num_dims must be a positive integer, got 0"):
        evaluate.bits_per_dim(80.0, 0)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        evaluate.iwae_nll_from_log_weights(None, None, {"x": np.zeros((2, 4))}, None, k=0)
    with pytest.raises(ValueError, match="k_chunk must be a positive integer, got -1"):
        evaluate.iwae_nll_from_log_weights(None, None, {"x": np.zeros((2, 4))}, None, k=5, k_chunk=-1)
