"""The pure losses against closed forms, Monte Carlo estimates, SciPy and direct formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from vae_jax import losses

jax.config.update("jax_enable_x64", False)


def _rand(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_gaussian_kl_matches_monte_carlo():
    mean = np.array([[0.5, -1.0, 2.0]], np.float32)
    logvar = np.array([[0.3, -0.7, 0.1]], np.float32)
    std = np.exp(0.5 * logvar[0])
    z = np.random.default_rng(0).normal(size=(400_000, 3)) * std + mean[0]
    log_q = stats.norm.logpdf(z, mean[0], std).sum(-1)
    log_p = stats.norm.logpdf(z).sum(-1)
    mc = np.mean(log_q - log_p)
    kl = losses.gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar))
    chex.assert_shape(kl, (1,))
    np.testing.assert_allclose(kl[0], mc, rtol=0, atol=0.02)


def test_gaussian_kl_between_matches_monte_carlo_and_reduces_to_standard_prior():
    mq, lq, mp, lp = (_rand(i, 4, 5) for i in range(4))
    kl = losses.gaussian_kl_between(mq, lq, mp, lp)
    chex.assert_shape(kl, (4,))
    z = np.random.default_rng(9).normal(size=(200_000, 4, 5)) * np.exp(0.5 * lq) + mq
    mc = (stats.norm.logpdf(z, mq, np.exp(0.5 * lq)) - stats.norm.logpdf(z, mp, np.exp(0.5 * lp))).sum(-1).mean(0)
    np.testing.assert_allclose(kl, mc, rtol=0.02, atol=0.05)
    zeros = np.zeros_like(mq)
    np.testing.assert_allclose(losses.gaussian_kl_between(mq, lq, zeros, zeros), losses.gaussian_kl(mq, lq), rtol=1e-5)


def test_bernoulli_nll_matches_direct_formula():
    logits = _rand(1, 3, 4, 4, 1) * 3
    x = np.random.default_rng(2).uniform(size=logits.shape).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    direct = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=(1, 2, 3))
    nll = losses.bernoulli_nll(jnp.asarray(logits), jnp.asarray(x))
    chex.assert_shape(nll, (3,))
    np.testing.assert_allclose(nll, direct, rtol=1e-5)


def test_bernoulli_nll_and_its_gradient_match_optax_and_sigmoid_minus_x():
    logits = jnp.concatenate([jnp.asarray(_rand(6, 2, 50) * 8), jnp.zeros((2, 1))], axis=1)  # a tie at 0 too
    x = jnp.asarray(np.random.default_rng(7).uniform(size=logits.shape).astype(np.float32))
    reference = optax.sigmoid_binary_cross_entropy(logits, x).sum(axis=1)
    np.testing.assert_allclose(losses.bernoulli_nll(logits, x, event_ndim=1), reference, rtol=1e-6)
    grad = jax.grad(lambda l: losses.bernoulli_nll(l, x, event_ndim=1).sum())(logits)
    np.testing.assert_allclose(grad, jax.nn.sigmoid(logits) - x, atol=1e-6)  # d/dl [softplus(l) - x l]
    mask = (np.arange(51) % 3 == 0).astype(np.float32)
    np.testing.assert_allclose(
        losses.masked_bernoulli_nll(logits, x, mask, event_ndim=1),
        (optax.sigmoid_binary_cross_entropy(logits, x) * mask).sum(axis=1),
        rtol=1e-6,
    )


@pytest.mark.parametrize("magnitude", [1e4, 1e9])
def test_bernoulli_nll_is_exact_at_extreme_logits(magnitude):
    logits = jnp.array([[magnitude, -magnitude, magnitude, -magnitude]])
    x = jnp.array([[1.0, 0.0, 0.0, 1.0]])
    nll = losses.bernoulli_nll(logits, x, event_ndim=1)
    # Right answers cost 0 nats; confident wrong answers cost |logit| nats each.
    np.testing.assert_allclose(nll, [2 * magnitude], rtol=1e-6)
    grad = jax.grad(lambda l: losses.bernoulli_nll(l, x, event_ndim=1).sum())(logits)
    np.testing.assert_allclose(grad, [[0.0, 0.0, 1.0, -1.0]], atol=1e-6)


def test_gaussian_nll_matches_scipy_and_scaled_mse():
    x, mean = _rand(3, 2, 3, 3, 1), _rand(4, 2, 3, 3, 1)
    logvar = _rand(5, 2, 3, 3, 1) * 0.5
    expected = -stats.norm.logpdf(x, mean, np.exp(0.5 * logvar)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(losses.gaussian_nll(x, mean, logvar), expected, rtol=1e-5)
    c = 0.3  # fixed decoder variance: NLL = ||x - f(z)||^2 / (2c) + const
    const = 0.5 * x[0].size * (np.log(2 * np.pi) + np.log(c))
    mse_form = ((x - mean) ** 2).sum(axis=(1, 2, 3)) / (2 * c) + const
    np.testing.assert_allclose(losses.gaussian_nll(x, mean, np.log(c)), mse_form, rtol=1e-5)


def test_reparameterize_is_deterministic_per_key_and_has_the_right_moments():
    mean = jnp.array([1.0, -2.0])
    logvar = jnp.array([0.0, np.log(4.0)])
    key = jax.random.key(0)
    np.testing.assert_array_equal(losses.reparameterize(key, mean, logvar), losses.reparameterize(key, mean, logvar))
    assert not np.allclose(
        losses.reparameterize(jax.random.key(1), mean, logvar), losses.reparameterize(key, mean, logvar)
    )
    z = losses.reparameterize(key, jnp.broadcast_to(mean, (200_000, 2)), jnp.broadcast_to(logvar, (200_000, 2)))
    np.testing.assert_allclose(z.mean(0), [1.0, -2.0], atol=0.02)
    np.testing.assert_allclose(z.std(0), [1.0, 2.0], rtol=0.01)
    grad_mean = jax.grad(lambda m: losses.reparameterize(key, m, logvar).sum())(mean)
    np.testing.assert_allclose(grad_mean, [1.0, 1.0])


def test_log_mean_exp_is_stable():
    log_w = jnp.array([[1000.0, 1000.0, 1000.0 + np.log(4.0)]])
    np.testing.assert_allclose(losses.log_mean_exp(log_w), [1000.0 + np.log(2.0)], rtol=1e-6)


def test_iwae_bound_on_a_linear_gaussian_model_with_known_likelihood():
    # z ~ N(0, 1), x | z ~ N(z, s2): log p(x) = log N(x; 0, 1 + s2) in closed form.
    s2, x = 0.5, 1.3
    log_px = stats.norm.logpdf(x, 0, np.sqrt(1 + s2))

    def log_w(q_mean, q_logvar, k, key):
        z = losses.reparameterize(key, jnp.full((k, 1), q_mean), jnp.full((k, 1), q_logvar))
        log_px_z = losses.gaussian_log_prob(jnp.full((k, 1), x), z, jnp.full((k, 1), np.log(s2)))
        return losses.vae_log_weights(log_px_z, z, jnp.full((k, 1), q_mean), jnp.full((k, 1), q_logvar))

    # With the exact posterior every weight equals p(x): L_1 = L_k = log p(x).
    post_mean, post_var = x / (1 + s2), s2 / (1 + s2)
    w = log_w(post_mean, np.log(post_var), 8, jax.random.key(0))
    np.testing.assert_allclose(w, np.full(8, log_px), rtol=1e-5)
    # With the prior as proposal the bound tightens with k towards log p(x).
    elbo = float(jnp.mean(log_w(0.0, 0.0, 20_000, jax.random.key(1))))
    l_k = float(losses.iwae_bound(log_w(0.0, 0.0, 20_000, jax.random.key(2))))
    assert elbo < l_k - 0.1
    np.testing.assert_allclose(l_k, log_px, atol=0.01)


def test_losses_under_jit_and_vmap_agree_with_eager():
    mean, logvar = _rand(6, 5, 3), _rand(7, 5, 3)
    eager = losses.gaussian_kl(mean, logvar)
    np.testing.assert_allclose(jax.jit(losses.gaussian_kl)(mean, logvar), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(losses.gaussian_kl)(mean, logvar), eager, rtol=1e-6)


def test_event_ndim_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="event_ndim must be between 0 and the array rank 2"):
        losses.gaussian_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), event_ndim=3)
