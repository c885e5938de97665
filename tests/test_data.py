"""The data layer: every spec, the offline fallback, binarization, and each bad input's message."""

import time

import chex
import numpy as np
import pytest

from vae_jax import data
from vae_jax.data import DataError, load_dataset


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_embedded_mnist_is_real_balanced_and_split_by_class():
    x_train, y_train, x_test, y_test = data.embedded_mnist()
    assert x_train.shape == (4500, 28, 28) and x_test.shape == (500, 28, 28)
    assert np.bincount(y_train).tolist() == [450] * 10
    assert np.bincount(y_test).tolist() == [50] * 10
    # Digits, not noise: a dark border and a bright centre, as in MNIST.
    assert x_train[:, :2].mean() < 2 and x_train[:, 10:18, 10:18].mean() > 60
    assert len(set(map(bytes, x_test)) & set(map(bytes, x_train))) == 0


def test_mnist_falls_back_quickly_when_tfds_cannot_be_had(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(data, "_tfds_reachable", lambda timeout=3.0: False)
    ds = load_dataset("mnist", data_dir=str(tmp_path))
    assert ds.source == data.EMBEDDED_MNIST_SOURCE
    assert "warning:" in capsys.readouterr().err
    chex.assert_shape(ds.x_train, (4500, 28, 28, 1))
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.summary()["n_test"] == 500


def test_reachability_probe_returns_within_its_timeout():
    start = time.monotonic()
    data._tfds_reachable(timeout=1.0)
    assert time.monotonic() - start < 5.0


def test_tfds_path_under_mock_data(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(data, "_tfds_reachable", lambda timeout=3.0: True)
    with tfds.testing.mock_data(num_examples=24):
        ds = load_dataset("tfds:mnist", data_dir=str(tmp_path))
        default = load_dataset("mnist", data_dir=str(tmp_path))
    chex.assert_shape([ds.x_train, ds.x_test], (24, 28, 28, 1))
    assert ds.x_train.dtype == np.float32 and ds.x_train.max() <= 1.0 and ds.x_train.min() >= 0.0
    chex.assert_shape(ds.y_train, (24,))
    assert ds.source == "tfds:mnist" and default.source == "tfds:mnist"


def test_tfds_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "_tfds_reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError, match="unknown TFDS dataset"):
        load_dataset("tfds:no_such_dataset_xyz")
    with pytest.raises(DataError, match="not prepared in .* download host cannot be reached"):
        load_dataset("tfds:fashion_mnist", data_dir=str(tmp_path))


def test_npz_keras_layout_uint8(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (20, 6, 5), dtype=np.uint8)
    x_test = rng.integers(0, 256, (4, 6, 5), dtype=np.uint8)
    spec = _write_npz(tmp_path / "d.npz", x_train=x_train, y_train=np.arange(20) % 3,
                      x_test=x_test, y_test=np.arange(4) % 3)
    ds = load_dataset(spec)
    np.testing.assert_allclose(ds.x_train[..., 0], x_train / 255.0, rtol=1e-6)
    assert ds.image_shape == (6, 5, 1) and ds.num_classes == 3
    assert ds.y_test.dtype == np.int32


def test_npz_x_only_keeps_the_last_tenth_as_test(tmp_path):
    x = np.random.default_rng(1).uniform(size=(50, 4, 4, 3)).astype(np.float32)
    ds = load_dataset(_write_npz(tmp_path / "x.npz", x=x))
    np.testing.assert_array_equal(ds.x_test, x[45:])
    np.testing.assert_array_equal(ds.x_train, x[:45])
    assert ds.y_train is None


def test_static_binarization_is_fixed_and_keeps_the_mean(tmp_path):
    x = np.full((4000, 2, 2), 0.3, np.float32)
    spec = _write_npz(tmp_path / "g.npz", x=x)
    a, b = load_dataset(spec, binarize="static"), load_dataset(spec, binarize="static")
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert set(np.unique(a.x_train)) == {0.0, 1.0}
    np.testing.assert_allclose(a.x_train.mean(), 0.3, atol=0.01)
    dyn = load_dataset(spec, binarize="dynamic")
    np.testing.assert_array_equal(dyn.x_train, x[:3600, ..., None])  # resampled in every train step instead
    assert set(np.unique(dyn.x_test)) == {0.0, 1.0}


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(images=np.zeros((5, 2, 2))), "expected arrays x_train, y_train, x_test, y_test or x"),
        (dict(x=np.full((10, 2, 2), np.nan)), "non-finite pixel values"),
        (dict(x=np.full((10, 2, 2), 2.0)), r"float in \[0, 1\], got range \[2, 2\]"),
        (dict(x=np.zeros((10, 2))), r"must have shape \(N, H, W\) or \(N, H, W, C\)"),
        (dict(x=np.zeros((10, 2, 2)), y=np.zeros(7)), "y has 7 labels but x has 10 images"),
        (dict(x_train=np.zeros((10, 2, 2)), y_train=np.zeros(9, int), x_test=np.zeros((2, 2, 2)),
              y_test=np.zeros(2, int)), "y_train must be a vector of 10 labels"),
        (dict(x_train=np.zeros((10, 2, 2)), x_test=np.zeros((2, 3, 3))), "train images are"),
    ],
)
def test_bad_npz_content_is_a_one_line_error(tmp_path, arrays, message):
    spec = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(spec)
    assert "\n" not in str(err.value)


def test_bad_specs_and_files(tmp_path):
    with pytest.raises(DataError, match="--dataset must be one of mnist, mnist:embedded, tfds:NAME, npz:PATH, got 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"npz:{tmp_path}/missing.npz")
    (tmp_path / "junk.npz").write_text("not an archive")
    with pytest.raises(DataError, match="not a readable .npz archive"):
        load_dataset(f"npz:{tmp_path}/junk.npz")
    with pytest.raises(DataError, match="--binarize must be one of none, dynamic, static"):
        load_dataset("mnist", binarize="yes")
    spec = _write_npz(tmp_path / "small.npz", x=np.zeros((20, 2, 2)))
    with pytest.raises(DataError, match=r"fewer than one batch \(--batch-size 64\)"):
        load_dataset(spec, batch_size=64)
