"""AE-vs-VAE measures against brute-force references, and the latent_sweep / latent_space jobs end to end."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from experiments import latent_space, latent_sweep
from vae_jax import latent_metrics, latent_views


def test_nearest_neighbor_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    queries, references = rng.uniform(size=(37, 5, 5, 1)), rng.uniform(size=(101, 5, 5, 1))
    references[7] = queries[3, ...]  # an exact match: distance 0 (up to float32 cancellation)
    brute = np.linalg.norm(queries.reshape(37, 1, -1) - references.reshape(1, 101, -1), axis=-1).min(axis=1)
    ours = latent_metrics.nearest_neighbor_distance(queries, references, chunk=8)
    np.testing.assert_allclose(ours, brute, rtol=1e-4, atol=2e-3)


def test_classifier_confidence_matches_scipy_entropy(mnist_small):
    classifier = latent_metrics.fit_digit_classifier(mnist_small.x_train, mnist_small.y_train)
    x = mnist_small.x_test
    probs = classifier.predict_proba(x.reshape(len(x), -1).astype(np.float64))
    measured = latent_metrics.classifier_confidence(classifier, x)
    np.testing.assert_allclose(measured["mean_entropy"], np.mean(scipy.stats.entropy(probs, axis=1)), rtol=1e-9)
    np.testing.assert_allclose(measured["mean_max_prob"], np.mean(probs.max(axis=1)))
    # Real digits are classified confidently, uniform noise is not.
    noise = latent_metrics.classifier_confidence(classifier, np.random.default_rng(0).uniform(size=x.shape) * 0.3)
    assert measured["mean_max_prob"] > noise["mean_max_prob"] and measured["mean_entropy"] < math.log(10)


def test_fit_mixture_recovers_separated_clusters_and_equals_a_plain_scikit_learn_fit():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    centres = np.array([[-8.0, 0.0, 0.0], [0.0, 8.0, 0.0], [0.0, 0.0, 8.0]])
    z = centres[rng.integers(0, 3, 3000)] + rng.normal(size=(3000, 3))
    mixture = latent_views.fit_mixture(z, 3, seed=0)  # fitted on one BLAS thread
    nearest = np.linalg.norm(mixture.means_[:, None] - centres[None], axis=-1).argmin(axis=0)
    assert sorted(nearest) == [0, 1, 2]
    np.testing.assert_allclose(mixture.means_[nearest], centres, atol=0.15)  # SE of a mean ~ 0.03
    plain = GaussianMixture(3, covariance_type="full", random_state=0, reg_covar=1e-4).fit(z)
    np.testing.assert_allclose(mixture.means_, plain.means_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mixture.score(z), plain.score(z), rtol=1e-12)


def test_tsne_on_one_thread_equals_scikit_learns_threaded_embedding_and_keeps_clusters_apart():
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    codes = 10.0 * np.eye(8)[labels] + rng.normal(size=(200, 8))
    embedded = latent_views.tsne_2d(codes, seed=0)
    threaded = TSNE(n_components=2, init="pca", perplexity=30.0, random_state=0, n_jobs=-1).fit_transform(codes)
    np.testing.assert_array_equal(embedded, threaded)
    distances = np.linalg.norm(embedded[:, None] - embedded[None], axis=-1) + np.diag(np.full(200, np.inf))
    assert np.mean(labels[distances.argmin(axis=1)] == labels) == 1.0  # every nearest neighbour shares its cluster


def test_tsnes_side_by_side_and_beside_jax_work_equal_each_alone():
    from threadpoolctl import threadpool_info

    rng = np.random.default_rng(1)
    codes = {"a": rng.normal(size=(120, 5)), "b": rng.normal(size=(90, 3)), "c": rng.normal(size=(60, 2))}
    before = [pool["num_threads"] for pool in threadpool_info()]
    with latent_views.analysis_threads(2) as pool:  # beside each other, JAX work and a mixture fit here
        futures = {name: pool.submit(latent_views.tsne_2d, c, 3) for name, c in codes.items()}
        assert all(p["num_threads"] == 1 for p in threadpool_info())
        jax.block_until_ready(jnp.ones((64, 64)) @ jnp.ones((64, 64)))
        latent_views.fit_mixture(codes["b"], 2, seed=0)
        embedded = {name: future.result() for name, future in futures.items()}
    for name, c in codes.items():
        np.testing.assert_array_equal(embedded[name], latent_views.tsne_2d(c, seed=3))
    assert [pool["num_threads"] for pool in threadpool_info()] == before  # the thread limits are restored


def test_latent_sweep_end_to_end(tmp_path, small_npz):
    workdir = str(tmp_path / "sweep")
    latent_sweep.main(
        [
            "--dataset",
            small_npz,
            "--latent-sizes",
            "2,8",
            "--epochs",
            "2",
            "--hidden",
            "64",
            "--batch-size",
            "64",
            "--workdir",
            workdir,
            "--no-progress",
        ]
    )
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert os.path.isfile(os.path.join(workdir, "latent_sweep.png"))
    assert summary["sub_workdirs"] == ["ae_z2", "ae_z8", "vae_z2", "vae_z8"]
    assert [row["latent_dim"] for row in summary["table"]] == [2, 8]
    for row in summary["table"]:
        d = row["latent_dim"]
        assert {"test_bce", "test_mse"} <= set(row["ae"])
        assert {"test_bce", "test_mse", "test_neg_elbo", "test_kl", "active_units"} <= set(row["vae"])
        assert all(
            np.isfinite(v["mean"]) for model in ("ae", "vae") for k, v in row[model].items() if k != "train_seconds"
        )
        assert 0 <= row["vae"]["active_units"]["mean"] <= d
        # The runner evaluated each sub-run on its own (through the model's forward pass); the AE's BCE
        # there is the same quantity the sweep measures by decoding the codes.
        ae_run = json.load(open(os.path.join(workdir, f"ae_z{d}", "summary.json")))
        np.testing.assert_allclose(row["ae"]["test_bce"]["mean"], ae_run["test"]["recon"]["mean"], rtol=1e-4)
        sub_config = json.load(open(os.path.join(workdir, f"vae_z{d}", "config.json")))
        assert sub_config["latent_dim"] == d and sub_config["hidden"] == [64] and sub_config["epochs"] == 2


def test_latent_space_end_to_end(tmp_path, small_npz, mnist_small, monkeypatch):
    from vae_jax import data

    # Distances are to the first ANALYSIS_TRAIN_EXAMPLES training images; the whole split is never converted.
    monkeypatch.setattr(data.dataset, "ANALYSIS_TRAIN_EXAMPLES", 300)
    monkeypatch.setattr(data.Dataset, "x_train", property(lambda self: pytest.fail("whole training split converted")))
    workdir = str(tmp_path / "space")
    args = ["--dataset", small_npz, "--epochs", "2", "--hidden", "64", "--batch-size", "64", "--tsne-latent-dim", "5"]
    args += ["--tsne-points", "60", "--num-samples", "100", "--grid-size", "4", "--workdir", workdir, "--no-progress"]
    latent_space.main(args)
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    for name in ["latents_2d.png", "latent_grid_ae.png", "latent_grid_vae.png", "prior_samples.png", "tsne.png"]:
        assert os.path.isfile(os.path.join(workdir, name)), name
    assert set(summary["sample_quality"]) == {"ae_z2", "vae_z2", "ae_z5", "vae_z5"}
    for name, quality in summary["sample_quality"].items():
        for part in ("prior_samples", "test_reconstructions"):
            assert set(quality[part]) == {"nn_distance_mean", "mean_max_prob", "mean_entropy"}
            assert all(np.isfinite(v) for v in quality[part].values())
            assert 0.1 <= quality[part]["mean_max_prob"] <= 1.0 and 0 <= quality[part]["mean_entropy"] <= math.log(10)
        assert len(quality["code_std"]) == int(name.split("_z")[1])
        np.testing.assert_allclose(
            quality["nn_distance_ratio"],
            quality["prior_samples"]["nn_distance_mean"] / quality["test_reconstructions"]["nn_distance_mean"],
        )
    # The real-image reference, by NumPy brute force on the same (uint8-rounded) images.
    x_train = np.round(mnist_small.train_pixels[:300].reshape(300, -1) * 255) / 255
    x_test = np.round(mnist_small.x_test.reshape(128, -1) * 255) / 255
    brute = np.linalg.norm(x_test[:100, None] - x_train[None], axis=-1).min(axis=1).mean()
    np.testing.assert_allclose(summary["reference"]["test_images"]["nn_distance_mean"], brute, rtol=1e-4)
    # The t-SNEs above started while the 2-D pair trained; run again at report time (nothing left to train, the
    # record stale), the figure is the same to the byte and the record the same.
    with open(os.path.join(workdir, "tsne.png"), "rb") as f:
        early = f.read()
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump({**summary, "report_fingerprint": "sha256:stale"}, f)
    again = latent_space.main(args)
    with open(os.path.join(workdir, "tsne.png"), "rb") as f:
        assert f.read() == early
    assert {k: v for k, v in again.items() if k != "phases"} == {k: v for k, v in summary.items() if k != "phases"}


def test_latent_space_rerun_reuses_the_summary_that_a_recomputation_gives(tmp_path, small_npz, capsys):
    """Determinism, not maths: a rerun may reuse summary.json only because measuring the same checkpoints again
    with the same flags gives the same record, so the reused record is compared with a forced recomputation
    (the measurements are checked against independent computations in the tests above)."""
    workdir = str(tmp_path / "space")
    args = ["--dataset", small_npz, "--epochs", "1", "--hidden", "16", "--tsne-latent-dim", "0"]
    args += ["--num-samples", "40", "--grid-size", "3", "--workdir", workdir, "--no-progress"]
    latent_space.main(args)
    reused = latent_space.main(args)  # finished checkpoints, same data and flags: nothing is measured again
    assert "reusing" in capsys.readouterr().err
    path = os.path.join(workdir, "summary.json")
    stored = json.load(open(path))
    stored["report_fingerprint"] = "sha256:stale"  # as if a checkpoint had changed: measured and drawn again
    with open(path, "w") as f:
        json.dump(stored, f)
    recomputed = latent_space.main(args)
    assert "reusing" not in capsys.readouterr().err
    recomputed, reused = ({k: v for k, v in d.items() if k != "phases"} for d in (recomputed, reused))
    assert json.loads(json.dumps(recomputed)) == reused  # phases: each command's own time


def test_cached_classifier_gives_the_probabilities_of_a_fresh_scikit_learn_fit(mnist_small):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x, y = mnist_small.x_train[:300], mnist_small.y_train[:300]
    first = latent_metrics.fit_digit_classifier(x, y, seed=3)
    second = latent_metrics.fit_digit_classifier(x, y, seed=3)  # loaded from the cache
    idx = np.random.default_rng(3).permutation(len(x))
    with threadpool_limits(limits=1):  # the documented fit: one BLAS thread (others differ in the last bits)
        direct = LogisticRegression(max_iter=300, C=0.1).fit(x[idx].reshape(len(x), -1).astype(np.float64), y[idx])
    queries = mnist_small.x_test[:50].reshape(50, -1).astype(np.float64)
    for classifier in (first, second):
        np.testing.assert_allclose(classifier.predict_proba(queries), direct.predict_proba(queries), rtol=1e-12)


def test_cached_by_inputs_recomputes_only_when_an_input_changes():
    calls = []

    def build():
        calls.append(1)
        return (np.arange(3.0) * len(calls),)

    a = np.ones((2, 2), np.float32)
    first = latent_metrics.cached_by_inputs("test-entry", build, (a,), seed=0)
    again = latent_metrics.cached_by_inputs("test-entry", build, (a,), seed=0)
    other_seed = latent_metrics.cached_by_inputs("test-entry", build, (a,), seed=1)
    other_array = latent_metrics.cached_by_inputs("test-entry", build, (a + 1,), seed=0)
    assert len(calls) == 3
    np.testing.assert_array_equal(again[0], first[0])
    assert other_seed[0][1] == 2.0 and other_array[0][1] == 3.0
