"""The VAE objective: likelihoods against scipy, beta / free bits / IWAE against direct computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import expit

from vae_jax import losses, objectives, schedules
from vae_jax.models.vae import VAE, init_params


def _softclip(raw, minimum=objectives.MIN_LEARNED_LOGVAR):
    return minimum + np.logaddexp(0.0, raw - minimum)


@pytest.fixture()
def images():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 4, 5, 2)).astype(np.float32)
    out = rng.normal(size=(3, 4, 5, 2)).astype(np.float32)
    return x, out


def test_bernoulli_likelihood_against_scipy(images):
    x, logits = images
    x = (x > 0.5).astype(np.float32)
    expected = -stats.bernoulli.logpmf(x, expit(logits.astype(np.float64))).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(objectives.reconstruction_nll("bernoulli", logits, x), expected, rtol=1e-5)


@pytest.mark.parametrize("log_c", [0.0, -3.0, np.log(0.5)])
def test_fixed_variance_gaussian_against_scipy(images, log_c):
    x, out = images
    expected = -stats.norm.logpdf(x, expit(out.astype(np.float64)), np.exp(0.5 * log_c)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(objectives.reconstruction_nll("gaussian", out, x, log_c), expected, rtol=1e-5)


def test_c_one_half_is_summed_squared_error_plus_d_half_log_pi(images):
    # The lecture's faces loss: with c = 1/2, -log p(x|z) = ||x - mean||^2 + (D/2) log(pi).
    x, out = images
    d = x[0].size
    sse = np.square(x - expit(out)).sum(axis=(1, 2, 3))
    got = objectives.reconstruction_nll("gaussian", out, x, np.log(0.5))
    np.testing.assert_allclose(got, sse + 0.5 * d * np.log(np.pi), rtol=1e-5)


def test_shared_and_per_pixel_learned_variance_against_scipy(images):
    x, mean_logits = images
    rng = np.random.default_rng(1)
    per_pixel = rng.normal(scale=3.0, size=x.shape).astype(np.float32) - 4.0
    shared = np.full(x.shape, -2.5, np.float32)
    for raw in (per_pixel, shared):
        out = np.concatenate([mean_logits, raw], axis=-1)
        std = np.exp(0.5 * _softclip(raw.astype(np.float64)))
        expected = -stats.norm.logpdf(x, expit(mean_logits.astype(np.float64)), std).sum(axis=(1, 2, 3))
        for likelihood in objectives.LEARNED_VARIANCE:
            np.testing.assert_allclose(objectives.reconstruction_nll(likelihood, out, x), expected, rtol=1e-5)
    np.testing.assert_allclose(objectives.decoder_mean(out, 2), expit(mean_logits), rtol=1e-6)


def test_shared_variance_model_has_one_learned_scalar():
    model = VAE(latent_dim=3, hidden=(8,), image_shape=(4, 4, 1), likelihood="gaussian_shared_var")
    params = init_params(model, jax.random.key(0))
    assert params["shared_logvar"]["decoder_logvar"].shape == ()
    out = model.apply({"params": params}, jnp.zeros((2, 3)), method=model.decode)
    assert out.shape == (2, 4, 4, 2)
    np.testing.assert_array_equal(out[..., 1], 0.0)  # the shared log-variance, initialised at 0
    pixel = VAE(latent_dim=3, hidden=(8,), image_shape=(4, 4, 3), likelihood="gaussian_pixel_var")
    assert pixel.apply(
        {"params": init_params(pixel, jax.random.key(0))}, jnp.zeros((2, 3)), method=pixel.decode
    ).shape == (2, 4, 4, 6)


# --- objective-level properties on a deterministic toy family ---------------------------
# recon_b = a * sum(x_b), kl_per_dim_b = (m * mean(x_b))^2: no sampling, so every value is exact.


def _toy_terms(params, batch, key):
    del key
    s = jnp.sum(batch["x"], axis=(1, 2, 3))
    kl_per_dim = jnp.square(params["m"][None, :] * jnp.mean(batch["x"], axis=(1, 2, 3))[:, None])
    return {"recon": params["a"] * s, "kl": kl_per_dim.sum(-1), "kl_per_dim": kl_per_dim, "kl_extra": 2.0 * s}


TOY_PARAMS = {"a": jnp.float32(0.5), "m": jnp.array([0.01, 0.3, 2.0, 5.0], jnp.float32)}


def _toy_batch(n=8):
    return {"x": jnp.asarray(np.random.default_rng(2).uniform(size=(n, 3, 3, 1)), jnp.float32)}


def _toy_numpy(batch):
    x = np.asarray(batch["x"], np.float64)
    recon = 0.5 * x.sum(axis=(1, 2, 3))
    kl_per_dim = np.square(np.asarray(TOY_PARAMS["m"], np.float64)[None] * x.mean(axis=(1, 2, 3))[:, None])
    return recon, kl_per_dim


def test_beta_one_is_the_plain_elbo_and_beta_weighs_the_kl():
    batch = _toy_batch()
    recon, kl_per_dim = _toy_numpy(batch)
    key = jax.random.key(0)
    loss_fn, eval_fn = objectives.make_elbo_objective(_toy_terms)
    loss, metrics = jax.jit(loss_fn)(TOY_PARAMS, batch, key, 0)
    np.testing.assert_allclose(loss, np.mean(recon + kl_per_dim.sum(-1)), rtol=1e-6)
    np.testing.assert_allclose(metrics["neg_elbo"], loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["kl_extra"], np.mean(2 * np.asarray(batch["x"]).sum(axis=(1, 2, 3))), rtol=1e-6)
    per_example = eval_fn(TOY_PARAMS, batch, key)
    np.testing.assert_allclose(per_example["neg_elbo"], recon + kl_per_dim.sum(-1), rtol=1e-6)
    assert set(per_example) == {"neg_elbo", "recon", "kl", "kl_extra"}

    schedule = schedules.linear_warmup(4.0, 10)  # beta = 1.2 at step 3
    loss_fn, _ = objectives.make_elbo_objective(_toy_terms, beta_schedule=schedule)
    loss, metrics = jax.jit(loss_fn)(TOY_PARAMS, batch, key, jnp.int32(3))
    np.testing.assert_allclose(metrics["beta"], 1.2, rtol=1e-6)
    np.testing.assert_allclose(loss, np.mean(recon + 1.2 * kl_per_dim.sum(-1)), rtol=1e-6)
    np.testing.assert_allclose(metrics["neg_elbo"], np.mean(recon + kl_per_dim.sum(-1)), rtol=1e-6)  # unweighted


def test_free_bits_floors_every_dimension_in_the_objective():
    batch = _toy_batch()
    recon, kl_per_dim = _toy_numpy(batch)
    floor = 0.25
    loss_fn, _ = objectives.make_elbo_objective(_toy_terms, free_bits=floor, beta_schedule=schedules.constant(2.0))
    loss, metrics = loss_fn(TOY_PARAMS, batch, jax.random.key(0), 0)
    assert kl_per_dim.min() < floor < kl_per_dim.max()  # the toy has dimensions on both sides of the floor
    np.testing.assert_allclose(loss, np.mean(recon + 2.0 * np.maximum(kl_per_dim, floor).sum(-1)), rtol=1e-6)
    np.testing.assert_allclose(metrics["kl"], kl_per_dim.sum(-1).mean(), rtol=1e-6)  # reported KL is not floored
    # No dimension contributes less than its floor, and dimensions under it get no gradient from the KL.
    kl_term = objectives.free_bits_kl(jnp.asarray(kl_per_dim, jnp.float32), floor)
    assert np.all(np.asarray(kl_term) >= floor * kl_per_dim.shape[1] - 1e-6)
    grad = jax.grad(lambda k: objectives.free_bits_kl(k, floor).sum())(jnp.asarray(kl_per_dim, jnp.float32))
    np.testing.assert_array_equal(np.asarray(grad), (kl_per_dim > floor).astype(np.float32))


def test_losses_do_not_depend_on_batch_size():
    batch = _toy_batch(8)
    halves = [{"x": batch["x"][:4]}, {"x": batch["x"][4:]}]
    for kwargs in ({}, {"free_bits": 0.25}, {"free_bits": 0.25, "beta_schedule": schedules.constant(3.0)}):
        loss_fn, eval_fn = objectives.make_elbo_objective(_toy_terms, **kwargs)
        whole = loss_fn(TOY_PARAMS, batch, jax.random.key(0), 0)[0]
        parts = [loss_fn(TOY_PARAMS, h, jax.random.key(0), 0)[0] for h in halves]
        np.testing.assert_allclose(whole, np.mean(parts), rtol=1e-6)
        per_example = eval_fn(TOY_PARAMS, batch, jax.random.key(0))["neg_elbo"]
        np.testing.assert_allclose(per_example[:4], eval_fn(TOY_PARAMS, halves[0], jax.random.key(0))["neg_elbo"])


def test_iwae_settings_are_validated():
    log_w = lambda p, b, key, k: jnp.zeros((b["x"].shape[0], k))  # noqa: E731
    with pytest.raises(ValueError, match="log_weights_fn"):
        objectives.make_elbo_objective(_toy_terms, iwae_k=4)
    with pytest.raises(ValueError, match="beta = 1"):
        objectives.make_elbo_objective(_toy_terms, log_w, iwae_k=4, free_bits=0.1)
    with pytest.raises(ValueError, match="beta = 1"):
        objectives.make_elbo_objective(_toy_terms, log_w, iwae_k=4, beta_schedule=schedules.constant(2.0))


# --- the Gaussian VAE's terms and IWAE objective -----------------------------------------


def _small_vae(likelihood="bernoulli"):
    model = VAE(latent_dim=3, hidden=(16,), image_shape=(6, 6, 1), likelihood=likelihood)
    params = init_params(model, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(3).uniform(size=(4, 6, 6, 1)) > 0.5, jnp.float32)
    return model, params, {"x": x}


def test_gaussian_vae_terms_against_scipy_densities():
    model, params, batch = _small_vae("gaussian")
    key = jax.random.key(5)
    terms = objectives.make_gaussian_vae_terms(model, "gaussian", -1.0)(params, batch, key)
    mean, logvar = (np.asarray(a, np.float64) for a in model.apply({"params": params}, batch["x"], method=model.encode))
    z = mean + np.exp(0.5 * logvar) * np.asarray(jax.random.normal(key, mean.shape))
    mu_x = expit(
        np.asarray(model.apply({"params": params}, jnp.asarray(z, jnp.float32), method=model.decode), np.float64)
    )
    recon = -stats.norm.logpdf(np.asarray(batch["x"]), mu_x, np.exp(-0.5)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(terms["recon"], recon, rtol=1e-4)
    # KL per dimension by numerical integration of q log(q/p) on a grid.
    grid = np.linspace(-12, 12, 20001)
    q = stats.norm.pdf(grid[None, None], mean[..., None], np.exp(0.5 * logvar)[..., None])
    integrand = q * (
        stats.norm.logpdf(grid[None, None], mean[..., None], np.exp(0.5 * logvar)[..., None]) - stats.norm.logpdf(grid)
    )
    kl_numeric = np.trapezoid(integrand, grid, axis=-1)
    np.testing.assert_allclose(terms["kl_per_dim"], kl_numeric, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(terms["kl"], kl_numeric.sum(-1), rtol=1e-4, atol=1e-6)


def test_iwae_objective_with_one_sample_is_the_elbo_in_expectation():
    # L_1 = E_q[log p(x, z) - log q(z|x)] = E_q[log p(x|z)] - KL: the mean of many k = 1 IWAE
    # losses matches the ELBO whose KL is in closed form, within Monte Carlo error.
    model, params, batch = _small_vae()
    terms_fn = objectives.make_gaussian_vae_terms(model)
    log_weights_fn = objectives.make_gaussian_vae_log_weights(model)
    n = 4000
    log_w = np.asarray(log_weights_fn(params, batch, jax.random.key(1), n), np.float64)  # [B, n]: n draws of k = 1
    one_sample_iwae = -log_w  # -L_1 per draw (iwae_bound over a single sample is its log-weight)
    np.testing.assert_allclose(
        -np.asarray(jax.vmap(lambda w: losses.iwae_bound(w[:, None]), 1, 1)(jnp.asarray(log_w[:, :5]))),
        one_sample_iwae[:, :5],
        rtol=1e-6,
    )
    keys = jax.random.split(jax.random.key(100), 2000)
    recon = np.asarray(jax.jit(jax.vmap(lambda k: terms_fn(params, batch, k)["recon"], out_axes=1))(keys), np.float64)
    kl = np.asarray(terms_fn(params, batch, jax.random.key(0))["kl"])
    elbo_estimate = recon.mean(1) + kl
    stderr = one_sample_iwae.std(1) / np.sqrt(n) + recon.std(1) / np.sqrt(recon.shape[1])
    assert np.all(np.abs(one_sample_iwae.mean(1) - elbo_estimate) < 4 * stderr + 1e-3)


def test_iwae_loss_is_the_negative_log_mean_exp_of_the_log_weights():
    model, params, batch = _small_vae()
    log_weights_fn = objectives.make_gaussian_vae_log_weights(model)
    loss_fn, _ = objectives.make_elbo_objective(objectives.make_gaussian_vae_terms(model), log_weights_fn, iwae_k=8)
    key = jax.random.key(7)
    loss, metrics = jax.jit(loss_fn)(params, batch, key, 0)
    _, iwae_key = jax.random.split(jax.random.split(key)[1])  # the keys loss_fn derives (no binarization)
    log_w = np.asarray(log_weights_fn(params, batch, iwae_key, 8), np.float64)
    expected = -(np.log(np.mean(np.exp(log_w - log_w.max(1, keepdims=True)), axis=1)) + log_w.max(1))
    np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)
    assert float(metrics["neg_iwae_bound"]) == float(loss)
