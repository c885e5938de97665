"""Autoencoder reconstruction losses, PSNR and the contractive penalty against independent computations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import losses, penalties


def _images(seed, shape=(3, 5, 4, 2)):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=shape).astype(np.float32), rng.uniform(size=shape).astype(np.float32)


def test_squared_error_forms_match_numpy_loops():
    x_hat, x = _images(0)
    b, h, w, c = x.shape
    loop_sum = np.array(
        [
            sum((x[n, i, j, k] - x_hat[n, i, j, k]) ** 2 for i in range(h) for j in range(w) for k in range(c))
            for n in range(b)
        ]
    )
    chex.assert_shape(losses.squared_error(x_hat, x), (b,))
    np.testing.assert_allclose(losses.squared_error(x_hat, x), loop_sum, rtol=1e-5)
    np.testing.assert_allclose(losses.mean_squared_error(x_hat, x), loop_sum / (h * w * c), rtol=1e-5)
    np.testing.assert_allclose(losses.half_mean_squared_error(x_hat, x), loop_sum / (2 * h * w * c), rtol=1e-5)


def test_half_mean_squared_error_is_the_lectures_one_over_2wh_form():
    # A hand-worked 2x2 one-channel example: errors 0.5, 0, 0, 1 -> (0.25 + 1) / (2 * 2 * 2) = 0.15625.
    x = jnp.array([[[[1.0], [0.0]], [[0.5], [0.0]]]])
    x_hat = jnp.array([[[[0.5], [0.0]], [[0.5], [1.0]]]])
    np.testing.assert_allclose(losses.half_mean_squared_error(x_hat, x), [0.15625], rtol=1e-6)
    np.testing.assert_allclose(losses.squared_error(x_hat, x), [1.25], rtol=1e-6)


def test_losses_keep_leading_axes_and_respect_event_ndim():
    x_hat, x = _images(1, (2, 3, 4, 5, 1))  # e.g. [seeds, B, H, W, C]
    chex.assert_shape(losses.squared_error(x_hat, x), (2, 3))
    chex.assert_shape(losses.psnr(x_hat, x), (2, 3))
    chex.assert_shape(losses.squared_error(x_hat, x, event_ndim=1), (2, 3, 4, 5))
    with pytest.raises(ValueError, match="event_ndim must be between 0 and the array rank 5, got 6"):
        losses.mean_squared_error(x_hat, x, event_ndim=6)


def test_masked_losses_count_only_masked_pixels():
    x_hat, x = _images(2, (2, 4, 4, 3))
    logits = np.random.default_rng(3).normal(size=x.shape).astype(np.float32) * 3
    mask = (np.random.default_rng(4).uniform(size=(2, 4, 4, 1)) < 0.4).astype(np.float32)
    full = np.broadcast_to(mask, x.shape).astype(bool)
    for n in range(2):
        sq = (x[n] - x_hat[n]) ** 2
        np.testing.assert_allclose(losses.masked_squared_error(x_hat, x, mask)[n], sq[full[n]].sum(), rtol=1e-5)
        np.testing.assert_allclose(losses.masked_mean_squared_error(x_hat, x, mask)[n], sq[full[n]].mean(), rtol=1e-5)
        p = 1 / (1 + np.exp(-logits[n].astype(np.float64)))
        bce = -(x[n] * np.log(p) + (1 - x[n]) * np.log(1 - p))
        np.testing.assert_allclose(losses.masked_bernoulli_nll(logits, x, mask)[n], bce[full[n]].sum(), rtol=1e-4)
    ones = np.ones((2, 4, 4, 1), np.float32)
    np.testing.assert_allclose(losses.masked_bernoulli_nll(logits, x, ones), losses.bernoulli_nll(logits, x), rtol=1e-6)
    np.testing.assert_allclose(losses.masked_squared_error(x_hat, x, ones), losses.squared_error(x_hat, x), rtol=1e-6)
    empty = np.zeros_like(ones)
    np.testing.assert_array_equal(losses.masked_mean_squared_error(x_hat, x, empty), [0.0, 0.0])


def test_masked_bernoulli_nll_is_finite_for_extreme_logits():
    logits = jnp.full((1, 2, 2, 1), 1e9)
    x = jnp.array([[[[1.0], [0.0]], [[1.0], [0.0]]]])
    mask = jnp.array([[[[1.0], [1.0]], [[0.0], [0.0]]]])
    value = jax.jit(losses.masked_bernoulli_nll)(logits, x, mask)
    np.testing.assert_allclose(value, [1e9], rtol=1e-6)  # only the masked wrong pixel counts


def test_psnr_matches_its_definition_and_is_finite_for_identical_images():
    x_hat, x = _images(5)
    mse = ((x - x_hat) ** 2).reshape(3, -1).mean(-1)
    np.testing.assert_allclose(losses.psnr(x_hat, x), 10 * np.log10(1.0 / mse), rtol=1e-5)
    np.testing.assert_allclose(losses.psnr(2 * x_hat, 2 * x, max_value=2.0), losses.psnr(x_hat, x), rtol=1e-5)
    np.testing.assert_allclose(losses.psnr(x, x), [100.0] * 3, rtol=1e-6)
    # An RMS error of 0.1 on [0, 1] images is 20 dB.
    np.testing.assert_allclose(losses.psnr_from_mse(jnp.array([0.01])), [20.0], rtol=1e-6)


# --- contractive penalty ------------------------------------------------------------------


def _encoder(seed=0, shape=(3, 3, 2), hidden=7, latent=4):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    w1 = jnp.asarray(rng.normal(size=(n, hidden)) / np.sqrt(n), jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(hidden, latent)) / np.sqrt(hidden), jnp.float32)

    def encode_fn(xi):  # one example [3, 3, 2] -> [4]
        return jnp.tanh(xi.reshape(-1) @ w1) @ w2

    return encode_fn


def _brute_force_sq_frobenius(encode_fn, xi, eps=1e-3):
    """||J||_F^2 with J built column by column from central differences in float64."""
    xi = np.asarray(xi, np.float64)
    f = jax.jit(lambda v: encode_fn(jnp.asarray(v, jnp.float32)))
    columns = []
    for i in range(xi.size):
        step = np.zeros(xi.size)
        step[i] = eps
        step = step.reshape(xi.shape)
        columns.append((np.asarray(f(xi + step), np.float64) - np.asarray(f(xi - step), np.float64)) / (2 * eps))
    return float(np.sum(np.square(np.stack(columns, axis=1))))


def _analytic_sq_frobenius(seed, xi, shape=(3, 3, 2), hidden=7, latent=4):
    """||W2^T diag(1 - tanh^2(W1^T x)) W1^T||_F^2 in NumPy float64."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    w1 = (rng.normal(size=(n, hidden)) / np.sqrt(n)).astype(np.float32).astype(np.float64)
    w2 = (rng.normal(size=(hidden, latent)) / np.sqrt(hidden)).astype(np.float32).astype(np.float64)
    a = np.asarray(xi, np.float64).reshape(-1) @ w1
    jac = w2.T @ np.diag(1 - np.tanh(a) ** 2) @ w1.T  # [latent, n]
    return float(np.sum(jac**2))


def test_exact_jacobian_norm_matches_numpy_and_a_column_by_column_jacobian():
    encode_fn = _encoder()
    x = np.random.default_rng(1).uniform(size=(5, 3, 3, 2)).astype(np.float32)
    for mode in penalties.JACOBIAN_MODES:
        exact = jax.jit(lambda xb, m=mode: penalties.jacobian_sq_frobenius(encode_fn, xb, m))(x)
        chex.assert_shape(exact, (5,))
        for n in range(5):
            np.testing.assert_allclose(exact[n], _analytic_sq_frobenius(0, x[n]), rtol=1e-4)
            np.testing.assert_allclose(exact[n], _brute_force_sq_frobenius(encode_fn, x[n]), rtol=2e-2)


def test_hutchinson_estimate_is_unbiased():
    encode_fn = _encoder(seed=2)
    x = np.random.default_rng(3).uniform(size=(2, 3, 3, 2)).astype(np.float32)
    exact = penalties.jacobian_sq_frobenius(encode_fn, x)
    estimate = penalties.hutchinson_sq_frobenius(encode_fn, x, jax.random.key(0), num_samples=20_000)
    chex.assert_shape(estimate, (2,))
    np.testing.assert_allclose(estimate, exact, rtol=0.03)
    one = penalties.contractive_penalty(encode_fn, x, "hutchinson", jax.random.key(1))
    again = penalties.contractive_penalty(encode_fn, x, "hutchinson", jax.random.key(1))
    np.testing.assert_array_equal(one, again)
    assert not np.allclose(one, exact, rtol=1e-3)  # a single probe is an estimate, not the value


def test_linear_encoder_penalty_is_the_weight_norm():
    w = np.random.default_rng(4).normal(size=(12, 3)).astype(np.float32)
    x = np.zeros((2, 2, 3, 2), np.float32)
    value = penalties.contractive_penalty(lambda xi: xi.reshape(-1) @ w, x)
    np.testing.assert_allclose(value, [np.sum(w.astype(np.float64) ** 2)] * 2, rtol=1e-5)


def test_penalty_errors_name_the_argument():
    encode_fn = _encoder()
    x = jnp.zeros((1, 3, 3, 2))
    with pytest.raises(ValueError, match=r"mode must be one of \('rev', 'fwd'\), got 'sideways'"):
        penalties.jacobian_sq_frobenius(encode_fn, x, "sideways")
    with pytest.raises(ValueError, match=r"method must be one of \('exact', 'hutchinson'\), got 'fd'"):
        penalties.contractive_penalty(encode_fn, x, "fd")
    with pytest.raises(ValueError, match='method="hutchinson" needs a key'):
        penalties.contractive_penalty(encode_fn, x, "hutchinson")
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        penalties.hutchinson_sq_frobenius(encode_fn, x, jax.random.key(0), 0)
