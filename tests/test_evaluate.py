"""Evaluation: batching, IWAE-k against the ELBO, active units, bits/dim, repeatability."""

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import evaluate, losses, objectives, tasks
from vae_jax.models.vae import VAE, init_params


def test_map_batches_pads_and_trims_like_a_direct_call():
    x = jnp.arange(23 * 3, dtype=jnp.float32).reshape(23, 3)
    out = jax.jit(lambda d: evaluate.map_batches(lambda b, i: {"s": b["x"].sum(-1) * 2}, d, 5))({"x": x})
    np.testing.assert_allclose(out["s"], np.asarray(x).sum(-1) * 2)


def test_active_units_and_bits_per_dim_by_hand():
    means = np.zeros((100, 3))
    means[:, 0] = np.linspace(-1, 1, 100)  # variance ~0.34: active
    means[:, 1] = np.linspace(-0.1, 0.1, 100)  # variance ~0.0034: inactive
    count, variance = evaluate.active_units(means)
    assert count == 1
    np.testing.assert_allclose(variance, np.var(means, axis=0))
    np.testing.assert_allclose(evaluate.bits_per_dim(784 * np.log(2), 784), 1.0)


def _trained_like_vae(mnist_small):
    model = VAE(latent_dim=4, hidden=(32,), image_shape=mnist_small.image_shape)
    return model, init_params(model, jax.random.key(0))


def _iwae_nll(model, params, x, key, k, k_chunk=100):
    """-L_k per example through the product path: the Gaussian-VAE log-weights, chunked over k."""
    log_weights_fn = objectives.make_gaussian_vae_log_weights(model)
    return evaluate.iwae_nll_from_log_weights(log_weights_fn, params, {"x": x}, key, k, k_chunk)


def test_iwae_with_one_sample_is_the_elbo_and_tightens_with_k(mnist_small):
    model, params = _trained_like_vae(mnist_small)
    x = jnp.asarray(mnist_small.x_test[:64])
    key = jax.random.key(1)
    # k = 1: the log-weight is the one-sample ELBO: log p(x|z) + log p(z) - log q(z|x).
    log_w = objectives.make_gaussian_vae_log_weights(model)(params, {"x": x}, key, 1)
    mean, logvar = model.apply({"params": params}, x, method=model.encode)
    # The samples are drawn example-major: one [B, k, D] standard-normal draw.
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, (mean.shape[0], 1, mean.shape[1]))[:, 0]
    out = model.apply({"params": params}, z, method=model.decode)
    direct = (
        -losses.bernoulli_nll(out, x) + losses.standard_normal_log_prob(z) - losses.gaussian_log_prob(z, mean, logvar)
    )
    np.testing.assert_allclose(log_w[:, 0], direct, rtol=1e-5)
    # On average over images, -L_k <= -L_1 (Burda et al. 2016, theorem 1).
    nll_1 = _iwae_nll(model, params, x, key, 1).mean()
    nll_200 = _iwae_nll(model, params, x, key, 200, k_chunk=64).mean()
    _, eval_fn = objectives.make_elbo_objective(objectives.make_gaussian_vae_terms(model))
    elbo = eval_fn(params, {"x": x}, key)["neg_elbo"].mean()
    assert nll_200 < nll_1 and nll_200 < elbo


def test_iwae_chunking_does_not_change_the_estimate_beyond_sampling_noise(mnist_small):
    model, params = _trained_like_vae(mnist_small)
    x = jnp.asarray(mnist_small.x_test[:32])
    a = _iwae_nll(model, params, x, jax.random.key(2), 300, k_chunk=300)
    b = _iwae_nll(model, params, x, jax.random.key(3), 300, k_chunk=70)
    np.testing.assert_allclose(a.mean(), b.mean(), rtol=5e-3)


def test_evaluate_runs_is_repeatable_and_consistent(mnist_small):
    model, params = _trained_like_vae(mnist_small)
    x = mnist_small.x_test[:100]
    _, eval_fn = objectives.make_elbo_objective(objectives.make_gaussian_vae_terms(model))
    parts = evaluate.gaussian_vae_parts(model, eval_fn, "bernoulli")
    replicated = jax.tree_util.tree_map(lambda a: a[None], params)

    def run():
        return evaluate.evaluate_runs(
            parts, replicated, {"x": x}, iwae_k=50, eval_batch_size=32, iwae_batch_size=32, k_chunk=20
        )[0]

    first, second = run(), run()
    assert first == second
    assert first["n"] == 100 and first["latent_dims"] == {"z": 4}
    np.testing.assert_allclose(first["neg_elbo"], first["recon"] + first["kl"], rtol=1e-5)
    assert first["iwae_nll"] < first["neg_elbo"]
    np.testing.assert_allclose(first["bits_per_dim"], first["iwae_nll"] / (784 * np.log(2)), rtol=1e-6)
    means = tasks.encode_means(model, params, x)
    assert first["active_units"] == int(np.sum(np.var(means, axis=0) > 0.01))
