"""Host-array helpers: the padded batching of model queries against direct NumPy computations."""

import jax
import numpy as np
import pytest

from vae_jax import arrays

TRACED_SHAPES = []


def _scale_and_sum(model, params, x):  # a module-level query, as apply_in_batches wants
    TRACED_SHAPES.append(x.shape)  # runs only while tracing
    return {"scaled": x * params["w"], "row_sum": x.sum(-1)}


def _plus_noise(model, params, key, x):
    return x + jax.random.normal(key, x.shape)


def test_apply_in_batches_pads_the_last_batch_and_compiles_one_shape():
    x = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)  # 23 rows in batches of 5: the last holds 3
    out = arrays.apply_in_batches(_scale_and_sum, "model", {"w": np.float32(2.0)}, x, batch_size=5)
    np.testing.assert_array_equal(out["scaled"], 2.0 * x)
    np.testing.assert_array_equal(out["row_sum"], x.sum(-1))
    assert set(TRACED_SHAPES) == {(5, 3)}  # the remainder batch ran padded, not compiled again


def test_apply_in_batches_gives_batch_i_the_key_fold_in_key_i():
    x = np.zeros((7, 2), np.float32)
    key = jax.random.key(3)
    out = arrays.apply_in_batches(_plus_noise, "model", {}, x, batch_size=3, key=key)
    expected = np.concatenate([np.asarray(jax.random.normal(jax.random.fold_in(key, i), (3, 2))) for i in range(3)])
    np.testing.assert_allclose(out, expected[:7], rtol=1e-6)


def test_apply_in_batches_names_arrays_of_different_lengths():
    with pytest.raises(ValueError, match="arrays of one non-zero length, got \\[4, 3\\]"):
        arrays.apply_in_batches(_scale_and_sum, "model", {}, np.zeros((4, 1)), np.zeros((3, 1)))


def test_standard_normal_is_jax_random_normal_to_the_bit():
    for seed, shape in ((0, (1000, 20)), (1, (7, 3)), (2, (20, 2))):
        key = jax.random.key(seed)
        got = arrays.standard_normal(key, shape)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == shape
        np.testing.assert_array_equal(got, np.asarray(jax.random.normal(key, shape)))
