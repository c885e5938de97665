"""experiments.cvae and experiments.hvae end to end on a tiny run, as a user runs them."""

import dataclasses
import json
import os

import numpy as np

import vae_jax
from experiments import cvae as cvae_exp
from experiments import hvae as hvae_exp
from vae_jax.reports import hvae as hvae_report


def test_cvae_writes_samples_figures_and_the_measured_class_control(tmp_path, small_npz, mnist_small):
    workdir = str(tmp_path / "cvae")
    summary = cvae_exp.main(
        [
            "--dataset",
            small_npz,
            "--epochs",
            "1",
            "--hidden",
            "32",
            "--batch-size",
            "128",
            "--workdir",
            workdir,
            "--no-progress",
        ]
    )
    for name in ("class_samples.png", "class_interpolations.png", "loss_curves.png", "cvae_samples.npz"):
        assert os.path.isfile(os.path.join(workdir, name)), name
    samples = np.load(os.path.join(workdir, "cvae_samples.npz"))
    assert samples["x"].shape == (1000, 28, 28, 1) and samples["x"].min() >= 0 and samples["x"].max() <= 1
    np.testing.assert_array_equal(np.bincount(samples["y"]), np.full(10, 100))
    control = json.load(open(os.path.join(workdir, "summary.json")))["class_control"]
    assert control == json.loads(json.dumps(summary["class_control"]))
    assert 0.0 <= control["requested_class_fraction"] <= 1.0 and control["classifier_test_accuracy"] > 0.5
    per_class = np.array(control["requested_class_fraction_per_class"])
    np.testing.assert_allclose(per_class.mean(), control["requested_class_fraction"], rtol=1e-6)  # 100 per class
    assert summary["diagnostics"]["latent_dim"] == 2


def test_hvae_compares_with_a_one_level_vae_of_matched_size_and_a_rerun_reuses_the_comparison(
    tmp_path, small_npz, capsys
):
    root = str(tmp_path / "hvae")
    args = ["--dataset", small_npz, "--epochs", "1", "--hidden", "32", "--top-hidden", "8", "--latent-dim", "4"]
    args += ["--top-latent-dim", "2", "--workdir", root, "--no-progress", "--iwae-examples", "64"]
    comparison = hvae_exp.main(args)
    path = os.path.join(root, "comparison.json")
    assert json.load(open(path))["figures"] == comparison["figures"]
    assert not os.path.exists(os.path.join(root, "config.json"))  # no run of its own around the two sub-runs
    h, v = comparison["hvae"], comparison["vae"]
    assert abs(h["params"] - v["params"]) / h["params"] < 0.05
    assert set(h["active_units_per_layer"]) == {"z1", "z2"} and set(v["active_units_per_layer"]) == {"z"}
    np.testing.assert_allclose(h["neg_elbo"], h["recon"] + h["kl_z1"] + h["kl_z2"], rtol=1e-5)
    x_test = np.load(small_npz.removeprefix("npz:"))["x_test"][..., None]  # stored [N, 28, 28]
    for name in ("hvae", "vae"):  # same checkpoint, same evaluation key: the sub-run's own test numbers
        summary = json.load(open(os.path.join(root, name, "summary.json")))
        np.testing.assert_allclose(comparison[name]["neg_elbo"], summary["test"]["neg_elbo"]["mean"], rtol=1e-5)
        # The terms and active units on all test images, taken from the run and its diagnostics, are those a
        # fresh evaluation of the checkpoint computes.
        fresh = vae_jax.load_run(os.path.join(root, name)).evaluate(x_test)
        assert comparison[name]["n"] == fresh["n"] == len(x_test)
        for term in ("neg_elbo", "recon", "kl"):
            np.testing.assert_allclose(comparison[name][term], fresh[term], rtol=1e-6)
        for entry in ("active_units", "active_units_per_layer", "latent_dims"):
            assert comparison[name][entry] == fresh[entry], entry
        assert comparison[name]["iwae_nll"] < comparison[name]["neg_elbo"]
        assert comparison[name]["iwae_examples"] == 64  # of 128 test images; the neg-ELBO above is on all 128
    difference = comparison["iwae_difference"]
    assert difference["examples"] == 64 and difference["standard_error"] > 0
    np.testing.assert_allclose(difference["vae_minus_hvae"], v["iwae_nll"] - h["iwae_nll"], rtol=1e-5, atol=1e-4)
    assert set(json.load(open(os.path.join(root, "hvae", "summary.json")))["diagnostics"]) == {"z1", "z2"}

    # The result lines give the test split's KL per layer, as the fresh evaluation has them.
    out, stored_bytes = capsys.readouterr().out, open(path, "rb").read()
    fresh_h = vae_jax.load_run(os.path.join(root, "hvae")).evaluate(x_test)
    fresh_v = vae_jax.load_run(os.path.join(root, "vae")).evaluate(x_test)
    assert f"KL z1 {fresh_h['kl_z1']:.2f}, KL z2 {fresh_h['kl_z2']:.2f};" in out
    assert f"KL {fresh_v['kl']:.2f};" in out

    # A rerun on the finished checkpoints, data and flags evaluates nothing again: it reuses comparison.json.
    reused = hvae_exp.main(args)
    rerun = capsys.readouterr()
    assert "reusing" in rerun.err and rerun.out == out and open(path, "rb").read() == stored_bytes
    stored = json.load(open(path))
    del stored["report_fingerprint"]  # no longer matches: the rerun evaluates and draws again
    with open(path, "w") as f:
        json.dump(stored, f)
    recomputed = hvae_exp.main(args)
    assert "reusing" not in capsys.readouterr().err
    assert json.loads(json.dumps(recomputed)) == reused == json.loads(json.dumps(comparison))
    assert recomputed["report_fingerprint"] == reused["report_fingerprint"]


def test_matched_vae_has_the_closest_parameter_count_of_all_scaled_widths():
    import jax

    from vae_jax import evaluate
    from vae_jax.models import vae as vae_model
    from vae_jax.tasks import hvae, vae

    config = hvae.HVAEConfig(hidden=(24, 10), top_hidden=(8,), latent_dim=3, top_latent_dim=2)
    matched, n, target = hvae_report.matched_vae_config(config, (8, 8, 1))

    def count(hidden):  # brute force over every width the search may pick
        model = vae.build_vae(dataclasses.replace(matched, hidden=hidden), (8, 8, 1))
        return evaluate.count_params(jax.eval_shape(lambda: vae_model.init_params(model, jax.random.key(0))))

    widths = dict.fromkeys(tuple(max(1, round(w * s)) for w in config.hidden) for s in np.linspace(0.8, 1.5, 71))
    closest = min(widths, key=lambda h: abs(count(h) - target))  # the first of equally close ones
    assert tuple(matched.hidden) == closest and n == count(closest)


def test_an_iwae_bound_on_the_first_images_is_that_of_the_whole_split_and_the_paired_error_is_scipys(mnist_small):
    """The IWAE bound of example i depends on its batch and that batch's key only, so the bound on the first
    n test images equals the first n bounds of the whole split's evaluation; per_example gives them."""
    import jax
    import scipy.stats

    from vae_jax import evaluate
    from vae_jax.tasks import vae

    model, task = vae.vae_task(vae.VAEConfig(latent_dim=3, hidden=(16,)), mnist_small.image_shape)
    params = jax.tree_util.tree_map(lambda a: a[None], task.init_params(jax.random.key(0)))
    parts = evaluate.gaussian_vae_parts(model, task.eval_fn, "bernoulli")
    x = mnist_small.x_test[:40]
    kwargs = dict(iwae_k=6, iwae_batch_size=8, k_chunk=4, eval_batch_size=16, per_example=True)
    whole = evaluate.evaluate_runs(parts, params, {"x": x}, **kwargs)[0]["iwae_nll_per_example"]
    first = evaluate.evaluate_runs(parts, params, {"x": x[:24]}, **kwargs)[0]
    np.testing.assert_array_equal(first["iwae_nll_per_example"], whole[:24])
    np.testing.assert_allclose(first["iwae_nll"], whole[:24].mean(), rtol=1e-6)
    # The bound alone (no single-sample terms, no posterior means): the same numbers.
    bound = evaluate.evaluate_runs(parts, params, {"x": x[:24]}, bound_only=True, **kwargs)[0]
    assert set(bound) == {"n", "iwae_nll", "bits_per_dim", "iwae_k", "iwae_nll_per_example"}
    np.testing.assert_array_equal(bound["iwae_nll_per_example"], whole[:24])
    assert bound["iwae_nll"] == first["iwae_nll"] and bound["bits_per_dim"] == first["bits_per_dim"]
    other = whole[:24] + np.linspace(-1, 2, 24) ** 2
    d = hvae_report.paired_difference(other, whole[:24])
    np.testing.assert_allclose(d["vae_minus_hvae"], np.mean(other - whole[:24]), rtol=1e-6)
    np.testing.assert_allclose(d["standard_error"], scipy.stats.sem(other - whole[:24]), rtol=1e-6)


def test_the_iwae_subset_is_a_fixed_random_sample_of_the_test_split():
    chosen = hvae_report.iwae_subset(10_000, 500)
    assert len(np.unique(chosen)) == 500 and np.all(np.diff(chosen) > 0) and chosen[-1] < 10_000
    np.testing.assert_array_equal(chosen, hvae_report.iwae_subset(10_000, 500))  # the same images every run
    assert chosen.max() > 5_000 and chosen.min() < 5_000  # not the first 500 of an ordered split
    np.testing.assert_array_equal(hvae_report.iwae_subset(300, 0), np.arange(300))
    np.testing.assert_array_equal(hvae_report.iwae_subset(300, 500), np.arange(300))
