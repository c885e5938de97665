"""Figure helpers: informative interpolation endpoints, the latent-manifold grid and its axis ticks."""

import itertools
import statistics

import matplotlib.pyplot as plt
import numpy as np
import pytest

from experiments import vae as vae_exp
from vae_jax import plots


def test_interpolation_endpoints_are_the_most_different_pair_of_different_classes():
    rng = np.random.default_rng(0)
    recon = rng.uniform(size=(12, 4, 4, 1))
    labels = rng.integers(0, 3, 12)
    a, b = vae_exp.interpolation_endpoints(recon, labels)
    best = max(((i, j) for i, j in itertools.combinations(range(12), 2) if labels[i] != labels[j]),
               key=lambda ij: np.sum((recon[ij[0]] - recon[ij[1]]) ** 2))
    assert labels[a] != labels[b] and {a, b} == set(best)
    a, b = vae_exp.interpolation_endpoints(recon, None)  # unlabelled: the most different pair overall
    best = max(itertools.combinations(range(12), 2), key=lambda ij: np.sum((recon[ij[0]] - recon[ij[1]]) ** 2))
    assert {a, b} == set(best)


def test_manifold_grid_is_prior_quantiles():
    z = vae_exp.manifold_grid(5)
    assert np.all(np.diff(z) > 0)
    expected = [statistics.NormalDist().inv_cdf(p) for p in (0.05, 0.275, 0.5, 0.725, 0.95)]
    np.testing.assert_allclose(z, expected, atol=1e-9)


def test_latent_grid_has_the_latent_values_on_its_axes(tmp_path, monkeypatch):
    z0, z1 = np.array([-1.0, 0.0, 1.0]), np.array([2.0, 0.5, -1.0, -2.5])
    images = np.zeros((12, 5, 5, 1))
    captured = {}
    original_save = plots._save

    def keep_axes(fig, path):
        captured["ax"] = fig.axes[0]
        captured["xticks"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        captured["yticks"] = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        return original_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep_axes)
    plots.save_latent_grid(images, z0, z1, str(tmp_path / "grid.png"), "grid")
    assert captured["xticks"] == ["-1", "0", "1"] and captured["yticks"] == ["2", "0.5", "-1", "-2.5"]
    assert (tmp_path / "grid.png").stat().st_size > 0
    with pytest.raises(ValueError, match="holds 11 decodings, expected 4 rows x 3 columns"):
        plots.save_latent_grid(images[:11], z0, z1, str(tmp_path / "bad.png"), "grid")
    plt.close("all")
