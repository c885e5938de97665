"""Principal angles, PCA and the linear AE against independent computations (SciPy, scikit-learn, hand cases)."""

import json
import os

import numpy as np
import pytest
import scipy.linalg
from sklearn.decomposition import PCA

from experiments import pca_vs_linear_ae
from vae_jax import linear_ae


@pytest.mark.parametrize("d, k, l", [(10, 3, 3), (50, 5, 2), (784, 16, 16), (6, 2, 4)])
def test_principal_angles_match_scipy(d, k, l):
    rng = np.random.default_rng(d + k + l)
    a, b = rng.normal(size=(d, k)), rng.normal(size=(d, l))
    np.testing.assert_allclose(linear_ae.principal_angles(a, b), scipy.linalg.subspace_angles(a, b), atol=1e-10)


def test_principal_angles_small_angles_are_accurate():
    # b = a rotated by 1e-6 rad out of its span: arccos alone would return ~1e-8 noise or 0.
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(20, 4)))
    a, out_of_span = q[:, :3], q[:, 3]
    b = a.copy()
    b[:, 0] = np.cos(1e-6) * a[:, 0] + np.sin(1e-6) * out_of_span
    angles = linear_ae.principal_angles(a @ rng.normal(size=(3, 3)), b)  # any basis of span(a)
    np.testing.assert_allclose(angles, [1e-6, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(angles, scipy.linalg.subspace_angles(a, b), atol=1e-12)


@pytest.mark.parametrize("theta_deg", [0.0, 1.0, 30.0, 90.0])
def test_principal_angles_two_planes_in_r3(theta_deg):
    # span(e1, e2) and span(e1, cos t e2 + sin t e3) share e1 and meet at angle t.
    t = np.radians(theta_deg)
    a = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [0.0, 3 * np.cos(t)], [0.0, 3 * np.sin(t)]])  # unnormalised basis
    np.testing.assert_allclose(linear_ae.degrees(linear_ae.principal_angles(a, b)), [theta_deg, 0.0], atol=1e-9)


def test_orthogonality_measures_hand_cases():
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(30, 5)))
    ortho = linear_ae.orthogonality(q * np.array([1.0, 2.0, 3.0, 4.0, 5.0]))  # orthogonal, not orthonormal
    assert ortho["max_abs_cosine"] < 1e-12 and ortho["offdiag_gram_ratio"] < 1e-12
    np.testing.assert_allclose([ortho["column_norm_min"], ortho["column_norm_max"]], [1.0, 5.0])
    # Two unit columns at 60 degrees: cos = 0.5; G = [[1, .5], [.5, 1]], ||offdiag|| / ||G|| = sqrt(.5) / sqrt(2.5).
    w = np.array([[1.0, 0.5], [0.0, np.sqrt(3) / 2], [0.0, 0.0]])
    ortho = linear_ae.orthogonality(w)
    np.testing.assert_allclose(ortho["max_abs_cosine"], 0.5)
    np.testing.assert_allclose(ortho["offdiag_gram_ratio"], np.sqrt(0.5 / 2.5))


def test_pca_matches_scikit_learn(mnist_small):
    x = mnist_small.x_train.reshape(len(mnist_small.x_train), -1)
    ours = linear_ae.pca(mnist_small.x_train, 8)
    theirs = PCA(n_components=8, svd_solver="full").fit(x)
    np.testing.assert_allclose(ours.explained_variance, theirs.explained_variance_, rtol=1e-4)
    assert np.max(linear_ae.principal_angles(ours.components.T, theirs.components_.T)) < 1e-4
    recon = theirs.inverse_transform(theirs.transform(x))
    np.testing.assert_allclose(ours.reconstruct(x.astype(np.float64)), recon, atol=1e-4)
    np.testing.assert_allclose(linear_ae.orthogonality(ours.components.T)["max_abs_cosine"], 0.0, atol=1e-10)


def test_align_basis_recovers_target_from_any_basis_of_its_span():
    rng = np.random.default_rng(2)
    target = rng.normal(size=(40, 4))
    np.testing.assert_allclose(linear_ae.align_basis(target @ rng.normal(size=(4, 4)), target), target, atol=1e-9)


def test_pca_experiment_small_finds_the_pca_subspace(tmp_path, mnist_small, capsys):
    path = tmp_path / "digits.npz"
    np.savez(
        path,
        x_train=(mnist_small.x_train[..., 0] * 255).round().astype(np.uint8),
        y_train=mnist_small.y_train,
        x_test=(mnist_small.x_test[..., 0] * 255).round().astype(np.uint8),
        y_test=mnist_small.y_test,
    )
    workdir = str(tmp_path / "run")
    argv = [
        "--dataset",
        f"npz:{path}",
        "--components",
        "6",
        "--epochs",
        "200",
        "--batch-size",
        "64",
        "--learning-rate",
        "3e-3",
        "--workdir",
        workdir,
        "--no-progress",
    ]
    pca_vs_linear_ae.main(argv)
    out = capsys.readouterr().out
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    for name in ["components.png", "basis_geometry.png", "reconstructions.png", "loss_curves.png", "metrics.jsonl"]:
        assert os.path.isfile(os.path.join(workdir, name)), name
    ae = summary["linear_ae"]
    assert len(ae["principal_angles_deg"]) == 6
    assert ae["max_principal_angle_deg"] < 3.0, ae["principal_angles_deg"]
    # m = 6 sits at a wide eigengap of this slice (variances 2.36 vs 1.74), so 1,600 Adam steps suffice.
    # PCA's error from scikit-learn on the same (uint8-rounded) data: the AE cannot beat it on the train split.
    x = np.round(mnist_small.x_train.reshape(512, -1) * 255) / 255
    sk = PCA(n_components=6).fit(x)
    sk_mse = float(np.mean((sk.inverse_transform(sk.transform(x)) - x) ** 2))
    np.testing.assert_allclose(summary["pca"]["mse_train"], sk_mse, rtol=1e-4)
    assert sk_mse * (1 - 1e-4) <= ae["mse_train"] <= sk_mse * 1.01
    # The rescaled/reparameterised decoder reconstructs exactly as the trained one does (the basis is free).
    assert ae["reparameterized_reconstruction_max_abs_diff"] < 1e-3
    # A rerun on the finished checkpoint reuses the summary and figures the report wrote for it.
    stored = open(os.path.join(workdir, "summary.json"), "rb").read()
    pca_vs_linear_ae.main(argv)
    rerun = capsys.readouterr()
    assert "reusing" in rerun.err and rerun.out == out
    assert open(os.path.join(workdir, "summary.json"), "rb").read() == stored
