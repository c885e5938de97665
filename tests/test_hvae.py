"""The two-level hierarchical VAE: shapes, each KL term against an independent Monte Carlo estimate
(scipy densities, tolerances from the standard error), log-weights in expectation, IWAE vs ELBO, and
per-example terms that do not depend on the batch."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from vae_jax.models.hvae import HVAE
from vae_jax.models.vae import init_params
from vae_jax.tasks import hvae

D1, D2 = 3, 2


def _model():
    model = HVAE(latent_dim=D1, top_latent_dim=D2, hidden=(16,), top_hidden=(8,), image_shape=(6, 5, 1))
    return model, init_params(model, jax.random.key(0))


def _x(b=4, seed=1):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(b, 6, 5, 1)), jnp.float32)


def _apply(model, params, method, *args):
    return [np.asarray(a, np.float64) for a in model.apply({"params": params}, *args, method=method)]


def test_shapes_and_terms_add_up():
    model, params = _model()
    x = _x()
    out = model.apply({"params": params}, x, jax.random.key(2))
    chex.assert_shape([out["z1"], out["q1_mean"], out["p1_mean"], out["p1_logvar"]], (4, D1))
    chex.assert_shape([out["z2"], out["q2_mean"], out["q2_logvar"]], (4, D2))
    chex.assert_shape(out["decoder_out"], (4, 6, 5, 1))
    terms = hvae.make_hvae_terms(model)(params, {"x": x}, jax.random.key(2))
    chex.assert_shape([terms["recon"], terms["kl"], terms["kl_z1"], terms["kl_z2"]], (4,))
    chex.assert_shape(terms["kl_per_dim"], (4, D1 + D2))
    np.testing.assert_allclose(terms["kl"], terms["kl_z1"] + terms["kl_z2"], rtol=1e-6)
    np.testing.assert_allclose(terms["kl_per_dim"].sum(-1), terms["kl"], rtol=1e-5, atol=1e-5)
    chex.assert_shape(model.apply({"params": params}, jax.random.key(3), 7, method=model.sample), (7, 6, 5, 1))


def test_kl_z2_is_the_analytic_kl_given_z1_as_monte_carlo_says():
    model, params = _model()
    x, key = _x(), jax.random.key(5)
    out = model.apply({"params": params}, x, key)
    kl_z2 = np.asarray(hvae.make_hvae_terms(model)(params, {"x": x}, key)["kl_z2"])
    mean, logvar = (np.asarray(out[k], np.float64) for k in ("q2_mean", "q2_logvar"))
    std = np.exp(0.5 * logvar)
    rng = np.random.default_rng(0)
    n = 200_000
    for b in range(x.shape[0]):  # E_{z2 ~ q(z2|z1)}[log q(z2|z1) - log N(z2; 0, I)] for the z1 the pass drew
        z2 = mean[b] + std[b] * rng.standard_normal((n, D2))
        log_ratio = stats.norm.logpdf(z2, mean[b], std[b]).sum(-1) - stats.norm.logpdf(z2).sum(-1)
        se = log_ratio.std() / np.sqrt(n)
        assert abs(log_ratio.mean() - kl_z2[b]) < 4 * se + 1e-6, (b, log_ratio.mean(), kl_z2[b], se)


def test_kl_z1_single_sample_estimate_is_unbiased_against_an_independent_monte_carlo():
    model, params = _model()
    x = _x(b=2)
    terms_fn = jax.jit(hvae.make_hvae_terms(model))
    n = 20_000
    keys = jax.random.split(jax.random.key(6), n)
    kl_z1 = np.asarray(jax.jit(jax.vmap(lambda k: terms_fn(params, {"x": x}, k)["kl_z1"]))(keys))  # [n, B]
    # Independent estimate: z1 ~ q(z1|x), z2 ~ q(z2|z1) drawn with NumPy, densities from scipy.
    q1_mean, q1_logvar = _apply(model, params, model.encode, x)
    rng = np.random.default_rng(1)
    for b in range(x.shape[0]):
        q1_std = np.exp(0.5 * q1_logvar[b])
        z1 = q1_mean[b] + q1_std * rng.standard_normal((n, D1))
        q2_mean, q2_logvar = _apply(model, params, model.encode_top, z1.astype(np.float32))
        z2 = q2_mean + np.exp(0.5 * q2_logvar) * rng.standard_normal((n, D2))
        p1_mean, p1_logvar = _apply(model, params, model.prior_bottom, z2.astype(np.float32))
        reference = stats.norm.logpdf(z1, q1_mean[b], q1_std).sum(-1) - stats.norm.logpdf(
            z1, p1_mean, np.exp(0.5 * p1_logvar)
        ).sum(-1)
        se = np.sqrt(reference.var() / n + kl_z1[:, b].var() / n)
        assert abs(kl_z1[:, b].mean() - reference.mean()) < 4 * se, (b, kl_z1[:, b].mean(), reference.mean(), se)


def test_log_weights_average_to_the_elbo_and_iwae_dominates_it():
    model, params = _model()
    x = _x(b=3)
    n = 20_000
    log_w = np.asarray(
        jax.jit(lambda k: hvae.make_hvae_log_weights(model)(params, {"x": x}, k, n))(jax.random.key(7)), np.float64
    )  # [B, n]
    keys = jax.random.split(jax.random.key(8), n)
    terms_fn = hvae.make_hvae_terms(model)
    neg_elbo = np.asarray(
        jax.jit(jax.vmap(lambda k: (lambda t: t["recon"] + t["kl"])(terms_fn(params, {"x": x}, k))))(keys), np.float64
    )  # [n, B]
    for b in range(3):
        se = np.sqrt(log_w[b].var() / n + neg_elbo[:, b].var() / n)
        assert abs(log_w[b].mean() + neg_elbo[:, b].mean()) < 4 * se
    # Per example, L_k >= the mean of the same k log-weights (Jensen), and -L_k falls with k on average.
    some = log_w[:, :50]
    assert np.all(np.log(np.mean(np.exp(some - some.max(1, keepdims=True)), 1)) + some.max(1) >= some.mean(1) - 1e-9)
    nll = {
        k: -np.mean(np.log(np.mean(np.exp(log_w[:, :k] - log_w[:, :k].max(1, keepdims=True)), 1)) + log_w[:, :k].max(1))
        for k in (1, 10, 1000)
    }
    assert nll[1000] < nll[10] < nll[1]


def test_log_weights_against_scipy_densities_for_the_draws_made():
    model, params = _model()
    x, key, k = _x(b=2), jax.random.key(9), 4
    log_w = np.asarray(hvae.make_hvae_log_weights(model)(params, {"x": x}, key, k), np.float64)
    q1_mean, q1_logvar = _apply(model, params, model.encode, x)
    key1, key2 = jax.random.split(key)
    z1 = q1_mean[:, None] + np.exp(0.5 * q1_logvar[:, None]) * np.asarray(jax.random.normal(key1, (2, k, D1)))
    z1_flat = z1.reshape(-1, D1).astype(np.float32)
    q2_mean, q2_logvar = _apply(model, params, model.encode_top, z1_flat)
    z2 = q2_mean + np.exp(0.5 * q2_logvar) * np.asarray(jax.random.normal(key2, (2 * k, D2)))
    p1_mean, p1_logvar = _apply(model, params, model.prior_bottom, z2.astype(np.float32))
    logits = np.asarray(model.apply({"params": params}, z1_flat, method=model.decode), np.float64).reshape(2 * k, -1)
    xs = np.repeat(np.asarray(x, np.float64).reshape(2, -1), k, axis=0)
    log_px = np.sum(xs * -np.logaddexp(0, -logits) + (1 - xs) * -np.logaddexp(0, logits), axis=1)
    direct = (
        log_px
        + stats.norm.logpdf(z1_flat, p1_mean, np.exp(0.5 * p1_logvar)).sum(-1)
        + stats.norm.logpdf(z2).sum(-1)
        - stats.norm.logpdf(z1.reshape(-1, D1), np.repeat(q1_mean, k, 0), np.repeat(np.exp(0.5 * q1_logvar), k, 0)).sum(
            -1
        )
        - stats.norm.logpdf(z2, q2_mean, np.exp(0.5 * q2_logvar)).sum(-1)
    )
    np.testing.assert_allclose(log_w.reshape(-1), direct, rtol=1e-4, atol=1e-3)


def test_per_example_terms_do_not_depend_on_the_batch():
    model, params = _model()
    # Posterior stds ~1e-13 in both layers: z1, z2 are the posterior means whatever the key draws,
    # so each example's terms are deterministic and must not depend on the other examples.
    for layer in ("encoder", "top_encoder"):
        params[layer]["logvar"]["kernel"] = jnp.zeros_like(params[layer]["logvar"]["kernel"])
        params[layer]["logvar"]["bias"] = jnp.full_like(params[layer]["logvar"]["bias"], -60.0)
    _, task = hvae.hvae_task(
        hvae.HVAEConfig(latent_dim=D1, top_latent_dim=D2, hidden=(16,), top_hidden=(8,)), (6, 5, 1)
    )
    x = _x(b=7)
    whole = task.eval_fn(params, {"x": x}, jax.random.key(0))
    for lo, hi in ((0, 3), (3, 7)):
        part = task.eval_fn(params, {"x": x[lo:hi]}, jax.random.key(1))
        for name in ("neg_elbo", "recon", "kl_z1", "kl_z2"):
            np.testing.assert_allclose(part[name], whole[name][lo:hi], rtol=1e-5, atol=1e-4)
