"""Collapse diagnostics: I(x; z) against a linear-Gaussian closed form, KL per dimension, active units."""

import jax
import numpy as np
from scipy import stats

from vae_jax import diagnostics


def _linear_gaussian(n=3000, gains=(2.0, 0.5, 0.0), noise_std=0.5, seed=0):
    # x ~ N(0, I_D); q(z_d | x) = N(a_d x_d, s^2). The aggregate q(z_d) = N(0, a_d^2 + s^2), so
    # I(x; z) = sum_d 1/2 log(1 + a_d^2 / s^2); a gain of 0 is a collapsed dimension.
    x = np.random.default_rng(seed).normal(size=(n, len(gains)))
    means = x * np.asarray(gains)
    logvars = np.full_like(means, 2 * np.log(noise_std))
    exact = 0.5 * np.log1p(np.square(gains) / noise_std**2)
    return means, logvars, exact


def test_mutual_information_matches_the_linear_gaussian_closed_form():
    means, logvars, exact = _linear_gaussian()
    estimate = diagnostics.mutual_information(means, logvars, jax.random.key(0), num_samples=2)
    assert abs(estimate - exact.sum()) < 0.06, (estimate, exact.sum())
    # Per dimension too (the estimator on one coordinate at a time).
    for d in range(3):
        est_d = diagnostics.mutual_information(means[:, d : d + 1], logvars[:, d : d + 1], jax.random.key(d))
        assert abs(est_d - exact[d]) < 0.05, (d, est_d, exact[d])


def test_collapsed_posterior_has_zero_information_and_zero_kl():
    n, d = 500, 4
    means, logvars = np.zeros((n, d)), np.zeros((n, d))  # q(z|x) = p(z) for every x
    out = diagnostics.collapse_diagnostics(means, logvars, jax.random.key(0))
    assert abs(out["mutual_information"]) < 1e-4
    assert out["active_units"] == 0 and out["collapsed_dims"] == d
    np.testing.assert_allclose(out["mean_kl_per_dim"], 0.0, atol=1e-12)
    np.testing.assert_allclose(out["mutual_information_max"], np.log(n))


def test_aggregate_log_density_against_scipy_mixture():
    rng = np.random.default_rng(1)
    means, logvars = rng.normal(size=(7, 2)), rng.normal(scale=0.3, size=(7, 2))
    z = rng.normal(size=(5, 2))
    got = np.asarray(diagnostics.aggregate_log_density(z, means, logvars, chunk=2))
    comps = np.stack([stats.multivariate_normal.pdf(z, means[i], np.diag(np.exp(logvars[i]))) for i in range(7)], 1)
    np.testing.assert_allclose(got, np.log(comps.mean(1)), rtol=1e-4)


def test_diagnostics_of_the_linear_gaussian_case():
    means, logvars, _ = _linear_gaussian()
    out = diagnostics.collapse_diagnostics(means, logvars, jax.random.key(0))
    # KL(N(a x, s^2) || N(0, 1)) averaged over x ~ N(0, 1): 1/2 (s^2 + a^2 - 1 - log s^2).
    s2, gains = 0.25, np.array([2.0, 0.5, 0.0])
    expected_kl = 0.5 * (s2 + gains**2 - 1 - np.log(s2))
    np.testing.assert_allclose(out["mean_kl_per_dim"], expected_kl, rtol=0.08)
    assert out["active_units"] == 2  # the gain-0 dimension has constant posterior means
    np.testing.assert_allclose(out["posterior_mean_variance"], np.var(means, axis=0))
    assert out["latent_dim"] == 3 and out["n"] == 3000
