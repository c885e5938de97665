"""The data layer: every spec, the offline fallback, binarization, and each bad input's message."""

import dataclasses
import os
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
    monkeypatch.setattr(data.tfds, "_tfds_reachable", lambda timeout=3.0: False)
    ds = load_dataset("mnist", data_dir=str(tmp_path))
    assert ds.source == data.EMBEDDED_MNIST_SOURCE
    assert "warning:" in capsys.readouterr().err
    chex.assert_shape(ds.x_train, (4500, 28, 28, 1))
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.summary()["n_test"] == 500


def test_reachability_probe_returns_within_its_timeout():
    start = time.monotonic()
    data.tfds._tfds_reachable(timeout=1.0)
    assert time.monotonic() - start < 5.0


def test_tfds_path_under_mock_data(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(data.tfds, "_tfds_reachable", lambda timeout=3.0: True)
    with tfds.testing.mock_data(num_examples=24):
        ds = load_dataset("tfds:mnist", data_dir=str(tmp_path))
        default = load_dataset("mnist", data_dir=str(tmp_path))
    chex.assert_shape([ds.x_train, ds.x_test], (24, 28, 28, 1))
    assert ds.x_train.dtype == np.float32 and ds.x_train.max() <= 1.0 and ds.x_train.min() >= 0.0
    chex.assert_shape(ds.y_train, (24,))
    assert ds.source == "tfds:mnist" and default.source == "tfds:mnist"


def test_tfds_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(data.tfds, "_tfds_reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError, match="unknown TFDS dataset"):
        load_dataset("tfds:no_such_dataset_xyz")
    with pytest.raises(DataError, match="not prepared in .* download host cannot be reached"):
        load_dataset("tfds:fashion_mnist", data_dir=str(tmp_path))


def test_npz_keras_layout_uint8(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (20, 6, 5), dtype=np.uint8)
    x_test = rng.integers(0, 256, (4, 6, 5), dtype=np.uint8)
    spec = _write_npz(
        tmp_path / "d.npz", x_train=x_train, y_train=np.arange(20) % 3, x_test=x_test, y_test=np.arange(4) % 3
    )
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


def test_uncompressed_npz_is_memory_mapped_and_read_from_disk_as_rows_are_used(tmp_path):
    rng = np.random.default_rng(4)
    x_train = rng.integers(0, 256, (300, 6, 5), dtype=np.uint8)
    x_test = rng.integers(0, 256, (40, 6, 5), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x_train, y_train=np.arange(300) % 3, x_test=x_test, y_test=np.arange(40) % 3)
    ds = load_dataset(f"npz:{path}", memory_map=True)
    assert ds.memory_mapped and ds.summary()["memory_mapped"]
    np.testing.assert_array_equal(ds.train_pixels[..., 0], x_train)
    np.testing.assert_array_equal(ds.test_pixels[..., 0], x_test)
    np.testing.assert_array_equal(ds.y_train, np.arange(300) % 3)
    assert ds.train_pixels.dtype == np.uint8 and ds.y_train.dtype == np.int32
    # The rows are the file's bytes: bytes written into the file after loading show in the loaded array.
    whole = path.read_bytes()
    row = x_train[123].tobytes()
    assert whole.count(row) == 1
    start = whole.index(row)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(255 - b for b in row))
    np.testing.assert_array_equal(ds.train_pixels[123, ..., 0], 255 - x_train[123])
    np.testing.assert_array_equal(ds.train_pixels[122, ..., 0], x_train[122])
    # Without memory_map, and from a compressed archive, the arrays are read into memory.
    np.savez(path, x_train=x_train, y_train=np.arange(300) % 3, x_test=x_test, y_test=np.arange(40) % 3)
    assert not load_dataset(f"npz:{path}").memory_mapped
    np.savez_compressed(tmp_path / "c.npz", x=x_train)
    compressed = load_dataset(f"npz:{tmp_path / 'c.npz'}", memory_map=True)
    assert not compressed.memory_mapped
    np.testing.assert_array_equal(compressed.train_pixels[..., 0], x_train[:270])


def test_memory_mapped_float_npz_is_checked_and_stays_mapped(tmp_path):
    x = np.random.default_rng(5).uniform(size=(50, 4, 4, 3)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=x)
    ds = load_dataset(f"npz:{tmp_path / 'f.npz'}", memory_map=True)
    assert ds.memory_mapped and ds.train_pixels.dtype == np.float32
    np.testing.assert_array_equal(ds.x_train, x[:45])  # an x-only archive: its splits are views of the map
    np.testing.assert_array_equal(ds.x_test, x[45:])
    x[49, 0, 0, 0] = 1.5  # past the range, in the last chunk of the test split
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(DataError, match=r"got range \[0.*, 1.5\]"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}", memory_map=True)
    x64 = np.random.default_rng(5).uniform(size=(20, 3, 3)).astype(np.float64)
    np.savez(tmp_path / "f64.npz", x=x64)
    ds64 = load_dataset(f"npz:{tmp_path / 'f64.npz'}", memory_map=True)
    assert not ds64.memory_mapped and ds64.train_pixels.dtype == np.float32  # converted: a copy in memory
    np.testing.assert_allclose(ds64.train_pixels[..., 0], x64[:18], rtol=1e-7)


def test_analyses_read_a_bounded_float_copy_of_the_training_split(monkeypatch):
    pixels = np.random.default_rng(7).integers(0, 256, (25, 3, 3, 1), dtype=np.uint8)
    ds = data.Dataset(pixels, None, pixels[:5], None, "made here")
    reference = pixels.astype(np.float64) / 255
    np.testing.assert_allclose(ds.x_train_first(10), reference[:10], rtol=1e-6)
    monkeypatch.setattr(data.dataset, "ANALYSIS_TRAIN_EXAMPLES", 7)
    np.testing.assert_allclose(ds.x_train_first(), reference[:7], rtol=1e-6)
    chunks = list(data.float_chunks(pixels))
    assert [len(c) for c in chunks] == [7, 7, 7, 4] and all(c.dtype == np.float32 for c in chunks)
    np.testing.assert_allclose(np.concatenate(chunks), reference, rtol=1e-6)


def test_save_npz_writes_what_load_dataset_reads_back(tmp_path):
    rng = np.random.default_rng(6)
    original = data.Dataset(
        rng.integers(0, 256, (30, 5, 5, 3), dtype=np.uint8),
        np.arange(30, dtype=np.int32) % 4,
        rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8),
        np.arange(6, dtype=np.int32) % 4,
        "made here",
        class_names=("cat", "dog", "emu", "yak"),
    )
    path = data.save_npz(original, str(tmp_path / "out.npz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]  # no temporary file left beside it
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # readable by whoever may read a new file here
    for memory_map in (False, True):
        back = load_dataset(f"npz:{path}", memory_map=memory_map)
        assert back.memory_mapped == memory_map and back.class_names == original.class_names
        for name in ("train_pixels", "y_train", "test_pixels", "y_test"):
            np.testing.assert_array_equal(getattr(back, name), getattr(original, name))
            assert getattr(back, name).dtype == getattr(original, name).dtype
    np.savez(
        tmp_path / "names.npz",
        x_train=original.train_pixels,
        y_train=original.y_train,
        x_test=original.test_pixels,
        y_test=original.y_test,
        class_names=np.array(["cat", "dog"]),
    )
    with pytest.raises(DataError, match=r"label 3 has no name \(2 class_names\)"):
        load_dataset(f"npz:{tmp_path / 'names.npz'}")
    np.savez(tmp_path / "names2.npz", x=original.train_pixels, class_names=np.arange(3))
    with pytest.raises(DataError, match="class_names must be a 1-D array of strings"):
        load_dataset(f"npz:{tmp_path / 'names2.npz'}")


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
        (
            dict(
                x_train=np.zeros((10, 2, 2)),
                y_train=np.zeros(9, int),
                x_test=np.zeros((2, 2, 2)),
                y_test=np.zeros(2, int),
            ),
            "y_train must be a vector of 10 labels",
        ),
        (dict(x_train=np.zeros((10, 2, 2)), x_test=np.zeros((2, 3, 3))), "train images are"),
    ],
)
@pytest.mark.parametrize("memory_map", [False, True])
def test_bad_npz_content_is_a_one_line_error(tmp_path, arrays, message, memory_map):
    spec = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(spec, memory_map=memory_map)
    assert "\n" not in str(err.value)


def test_bad_specs_and_files(tmp_path):
    with pytest.raises(
        DataError, match="--dataset must be one of mnist, mnist:embedded, tfds:NAME, npz:PATH, folder:PATH, got .cifar."
    ):
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


# --- uint8 storage: 1 byte a pixel on host and device, float per batch --------------------------------


def _uint8_and_float_datasets(mnist_small):
    """The same 512/128 digits stored as uint8 and as float32 (the float form computed on the host)."""
    train_u8 = np.round(mnist_small.x_train * 255).astype(np.uint8)
    test_u8 = np.round(mnist_small.x_test * 255).astype(np.uint8)
    as_u8 = data.Dataset(train_u8, mnist_small.y_train, test_u8, mnist_small.y_test, "uint8 digits")
    as_float = data.Dataset(
        train_u8.astype(np.float32) / 255,
        mnist_small.y_train,
        test_u8.astype(np.float32) / 255,
        mnist_small.y_test,
        "float digits",
    )
    return as_u8, as_float


def test_8bit_sources_are_stored_as_uint8_and_read_as_float(tmp_path, monkeypatch, small_npz):
    monkeypatch.setattr(data.tfds, "_tfds_reachable", lambda timeout=3.0: False)
    for ds in (load_dataset("mnist", data_dir=str(tmp_path)), load_dataset(small_npz)):
        n, h, w, c = ds.train_pixels.shape
        assert ds.train_pixels.dtype == ds.test_pixels.dtype == np.uint8
        assert ds.train_pixels.nbytes == n * h * w * c  # 1 byte a pixel, not 4
        assert ds.stored_bytes == (n + ds.num_test) * h * w * c
        assert ds.summary()["stored_dtype"] == "uint8"
        np.testing.assert_allclose(ds.x_train, ds.train_pixels.astype(np.float64) / 255.0, rtol=1e-6)
        assert ds.x_train.dtype == np.float32
    # 20,000 RGB faces of 128x128 as stored: 0.92 GiB rather than 3.7 GiB as float32.
    assert 20_000 * 128 * 128 * 3 / 2**30 < 1.0


def test_uint8_data_stays_uint8_on_the_device(mnist_small):
    from vae_jax import parallel, runner

    as_u8, _ = _uint8_and_float_datasets(mnist_small)
    on_device = parallel.Plan(1).place_examples(runner.host_split(as_u8.train_pixels, as_u8.y_train))
    assert on_device["x"].dtype == np.uint8 and on_device["x"].nbytes == as_u8.train_pixels.nbytes
    batch = data.batch_to_float({"x": on_device["x"][:4], "y": on_device["y"][:4]})
    assert batch["x"].dtype == np.float32 and batch["y"].dtype == np.int32
    np.testing.assert_allclose(np.asarray(batch["x"]), as_u8.train_pixels[:4] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(batch["x"]), as_u8.x_train[:4])  # host and device agree exactly


def test_training_from_uint8_equals_training_from_float(tmp_path, mnist_small):
    """Same parameters and test metrics whether the run's data is uint8 or float32.

    With dynamic binarization, which samples from the converted batch, so it covers both paths.
    """
    import chex
    import jax

    from vae_jax import runner, tasks

    as_u8, as_float = _uint8_and_float_datasets(mnist_small)
    results = {}
    for name, ds in (("uint8", as_u8), ("float", as_float)):
        config = tasks.VAEConfig(
            latent_dim=4,
            hidden=(32,),
            batch_size=64,
            epochs=1,
            workdir=str(tmp_path / name),
            progress=False,
            eval_batch_size=64,
            binarize="dynamic",
        )
        _, task = tasks.vae_task(config, ds.image_shape)
        results[name] = runner.train(config, task, ds)
    chex.assert_trees_all_close(
        jax.device_get(results["uint8"].state.params),
        jax.device_get(results["float"].state.params),
        rtol=1e-5,
        atol=1e-6,
    )
    for metric, values in results["float"].test_metrics.items():
        np.testing.assert_allclose(results["uint8"].test_metrics[metric], values, rtol=1e-5, atol=1e-5)
    assert results["uint8"].summary["dataset"]["stored_dtype"] == "uint8"


def test_binarized_data_is_stored_as_uint8(tmp_path):
    x = np.full((100, 3, 3), 0.25, np.float32)
    ds = load_dataset(_write_npz(tmp_path / "q.npz", x=x), binarize="static")
    assert ds.train_pixels.dtype == ds.test_pixels.dtype == np.uint8
    assert set(np.unique(ds.train_pixels)) <= {0, 255}


def test_image_size_resizes_array_sources(tmp_path):
    rng = np.random.default_rng(2)
    constant = np.full((10, 12, 20, 3), 200, np.uint8)
    ds = load_dataset(_write_npz(tmp_path / "c.npz", x=constant), image_size=6)
    assert ds.image_shape == (6, 6, 3) and ds.train_pixels.dtype == np.uint8
    assert np.all(ds.train_pixels == 200)  # a constant image stays constant
    floats = rng.uniform(size=(10, 9, 7)).astype(np.float32)
    ds = load_dataset(_write_npz(tmp_path / "f.npz", x=floats), image_size=14)
    assert ds.image_shape == (14, 14, 1) and ds.train_pixels.dtype == np.float32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0  # clipped after bicubic overshoot
    # Upsampling the centre 7x7 square by 2: its mean is kept within a little.
    np.testing.assert_allclose(ds.x_train.mean(axis=(1, 2, 3)), floats[:9, 1:8, :].mean(axis=(1, 2)), atol=0.03)
    with pytest.raises(DataError, match="--image-size must be 0"):
        load_dataset("mnist", image_size=-1)


def test_tfds_images_are_resized_as_they_are_read(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(data.tfds, "_tfds_reachable", lambda timeout=3.0: True)
    with tfds.testing.mock_data(num_examples=12):
        ds = load_dataset("tfds:mnist", data_dir=str(tmp_path), image_size=14)
        faces = {
            name: load_dataset(f"tfds:{name}", data_dir=str(tmp_path), image_size=16) for name in ("celeb_a", "lfw")
        }
    assert ds.image_shape == (14, 14, 1) and ds.train_pixels.dtype == np.uint8 and ds.num_train == 12
    assert ds.y_train.shape == (12,) and set(ds.y_train.tolist()) <= set(range(10))  # MNIST's digit classes
    for name, face in faces.items():  # CelebA's 218x178 and LFW's 250x250 RGB images, centre-cropped
        assert face.image_shape == (16, 16, 3) and face.train_pixels.dtype == np.uint8, name
        assert face.y_train is None, name  # LFW's "label" is a person's name, not a class index


# --- broken files and arrays -----------------------------------------------------------------------------


def test_truncated_or_corrupted_npz_is_a_one_line_error(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "t.npz"
    np.savez(path, x=rng.integers(0, 256, (200, 8, 8), dtype=np.uint8))
    whole = path.read_bytes()
    cases = {
        "half.npz": whole[: len(whole) // 2],  # the zip directory at the end is gone
        "tail.npz": whole[:-10],
        "flipped.npz": whole[:2000] + bytes([whole[2000] ^ 0xFF]) + whole[2001:],  # CRC mismatch in the member
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        # Memory-mapped members are not CRC-checked (that would read the whole file): a flipped byte is a pixel.
        for memory_map in (False, True) if name != "flipped.npz" else (False,):
            with pytest.raises(DataError) as err:
                load_dataset(f"npz:{tmp_path / name}", memory_map=memory_map)
            message = str(err.value)
            assert "\n" not in message and str(tmp_path / name) in message
            assert "not a readable .npz archive" in message or "truncated or corrupted" in message


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(x=np.array([["a", "b"], ["c", "d"]] * 10).reshape(10, 2, 2)), "must be uint8 or float, got dtype <U1"),
        (dict(x=np.ones((10, 2, 2), bool)), "must be uint8 or float, got dtype bool"),
        (dict(x=np.ones((10, 2, 2), np.complex64)), "must be uint8 or float, got dtype complex64"),
        (dict(x=np.zeros((10, 2, 2, 3, 1))), r"must have shape \(N, H, W\) or \(N, H, W, C\), got \(9, 2, 2, 3, 1\)"),
        (dict(x_train=np.zeros((0, 2, 2)), x_test=np.zeros((3, 2, 2))), "x_train holds no images"),
        (dict(x_train=np.zeros((4, 2, 2)), x_test=np.zeros((0, 2, 2))), "x_test holds no images"),
        (dict(x=np.full((10, 2, 2), np.inf, np.float32)), "non-finite pixel values"),
        (dict(x=np.zeros((10, 2, 2)), y=np.array(["a"] * 10)), "y_train must hold integer class labels, got dtype <U1"),
        (dict(x=np.zeros((10, 2, 2)), y=np.full(10, 0.5)), "y_train must hold integer class labels"),
        (
            dict(x_train=np.zeros((4, 2, 2)), y_train=np.zeros(4, int), x_test=np.zeros((2, 2, 2))),
            "labels are given for one split only",
        ),
    ],
)
@pytest.mark.parametrize("memory_map", [False, True])
def test_wrong_dtypes_ranks_and_empty_splits_are_one_line_errors(tmp_path, arrays, message, memory_map):
    spec = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(spec, memory_map=memory_map)
    assert "\n" not in str(err.value) and str(tmp_path / "bad.npz") in str(err.value)


def test_a_workdir_saved_before_image_size_existed_still_resumes(tmp_path):
    """config.json files written before --image-size existed lack it; they hold image_size = 0 runs."""
    import json

    from vae_jax import tasks
    from vae_jax import workdir as workdir_lib
    from vae_jax.errors import ConfigError

    config = tasks.VAEConfig(latent_dim=2, hidden=(8,), workdir=str(tmp_path))
    saved = workdir_lib.config_record(config)  # what a run writes into config.json
    del saved["image_size"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)  # the workdir holds a run (its checkpoint of epoch 3)
    workdir_lib.check_workdir(dataclasses.replace(config, epochs=3))  # no error: the missing field had its default
    with pytest.raises(ConfigError, match="other settings \\(--image-size 0 there, 16 here\\)"):
        workdir_lib.check_workdir(dataclasses.replace(config, epochs=3, image_size=16))


def test_evaluation_converts_uint8_batches(mnist_small):
    """Per-example evaluation and evaluate_runs give the same numbers for uint8 and float32 test images."""
    import jax

    from vae_jax import evaluate, tasks

    as_u8, _ = _uint8_and_float_datasets(mnist_small)
    pixels = as_u8.test_pixels[:40]  # 40 with batches of 16: the last batch is padded

    def mean_pixel(params, batch, key):
        return {"mean": batch["x"].mean(axis=(1, 2, 3)) * params}

    per_example = evaluate.make_per_example_eval(mean_pixel, batch_size=16)
    out = per_example(1.0, {"x": pixels}, evaluate.eval_key())
    np.testing.assert_allclose(out["mean"], pixels.mean(axis=(1, 2, 3)) / 255.0, rtol=1e-5)

    config = tasks.VAEConfig(latent_dim=3, hidden=(16,))
    model, task = tasks.vae_task(config, as_u8.image_shape)
    params = task.init_params(jax.random.key(0))
    parts = evaluate.gaussian_vae_parts(model, task.eval_fn, config.likelihood)
    replicated = jax.tree_util.tree_map(lambda a: a[None], params)

    def run(x):
        return evaluate.evaluate_runs(
            parts, replicated, {"x": x}, iwae_k=4, eval_batch_size=16, iwae_batch_size=16, k_chunk=2
        )[0]

    from_u8, from_float = run(pixels), run(pixels.astype(np.float32) / 255)
    for name in ("neg_elbo", "recon", "kl", "iwae_nll"):
        np.testing.assert_allclose(from_u8[name], from_float[name], rtol=1e-5)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"VAE_JAX_CACHE_DIR": "/c/mine", "XDG_CACHE_HOME": "/x"}, "/c/mine/tfds_probe.json"),
        ({"XDG_CACHE_HOME": "/x"}, "/x/vae_jax/tfds_probe.json"),
        ({}, "/h/.cache/vae_jax/tfds_probe.json"),
    ],
)
def test_the_probe_is_remembered_in_the_user_cache_folder(monkeypatch, env, expected):
    """The folder rule as the docs state it: $VAE_JAX_CACHE_DIR, else $XDG_CACHE_HOME/vae_jax, else
    ~/.cache/vae_jax."""
    for name in ("VAE_JAX_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", "/h")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert data.probe_cache_path() == expected
