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
    best = max(
        ((i, j) for i, j in itertools.combinations(range(12), 2) if labels[i] != labels[j]),
        key=lambda ij: np.sum((recon[ij[0]] - recon[ij[1]]) ** 2),
    )
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
    original_save = plots.save_figure

    def keep_axes(fig, path):
        captured["ax"] = fig.axes[0]
        captured["xticks"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        captured["yticks"] = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        return original_save(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep_axes)
    plots.save_latent_grid(images, z0, z1, str(tmp_path / "grid.png"), "grid")
    assert captured["xticks"] == ["-1", "0", "1"] and captured["yticks"] == ["2", "0.5", "-1", "-2.5"]
    assert (tmp_path / "grid.png").stat().st_size > 0
    with pytest.raises(ValueError, match="holds 11 decodings, expected 4 rows x 3 columns"):
        plots.save_latent_grid(images[:11], z0, z1, str(tmp_path / "bad.png"), "grid")
    plt.close("all")


def test_only_process_0_writes_figures_and_records(tmp_path, monkeypatch):
    """In a --distributed run every process draws the same figures and lists the same paths; process 0 alone
    writes them (and the JSON records)."""
    import ast
    import pathlib

    from vae_jax import distributed
    from vae_jax import workdir as workdir_lib

    images = np.zeros((4, 5, 5, 1))
    for main, expected in ((True, True), (False, False)):
        monkeypatch.setattr(distributed, "is_main_process", lambda main=main: main)
        path = tmp_path / f"grid_{main}.png"
        assert plots.save_grid(images, str(path), "grid") == str(path)
        workdir_lib.write_json(str(tmp_path / f"record_{main}.json"), {"a": 1})
        assert path.exists() == expected and (tmp_path / f"record_{main}.json").exists() == expected
    # The training experiments write nothing themselves except through those helpers (or behind the same check).
    writers = {"savefig", "savez", "savez_compressed", "dump", "write_text", "write_bytes"}
    modules = sorted((pathlib.Path(__file__).resolve().parents[1] / "experiments").glob("*.py"))
    training = [
        m
        for m in modules
        if m.name
        not in {
            "benchmark.py",
            "building_blocks.py",
            "evaluate.py",
            "generate.py",
            "reconstruct.py",
            "encode.py",
            "__init__.py",
        }
    ]
    # (no training run: a benchmark, a study of ops, one-process uses of a trained model)
    assert {m.name for m in training} >= {"vae.py", "vqvae.py", "autoencoder.py", "hvae.py", "cvae.py"}
    for module in training:
        tree = ast.parse(module.read_text())
        guarded = set()
        # Process 0's report step: the functions that runner.report_on_main(workdir, lambda: NAME(...)) calls.
        reports = {
            n.func.id
            for call in ast.walk(tree)
            if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "report_on_main"
            for n in ast.walk(call)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "is_main_process" in ast.unparse(node.test):
                guarded.update(id(n) for n in ast.walk(node))
            if isinstance(node, ast.FunctionDef) and node.name in reports:
                guarded.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or id(node) in guarded:
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            mode = (
                node.args[1].value
                if name == "open" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                else ""
            )
            assert name not in writers and "w" not in str(mode), (
                f"{module}:{node.lineno} writes outside process 0's helpers"
            )
