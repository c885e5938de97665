"""``folder:PATH`` datasets: layout, labels, channels, resizing and each broken file's one-line error.

Every folder is generated here with Pillow from arrays the test keeps, so the
loaded pixels are checked against those arrays (PNG is lossless) or against an
independent resize with Pillow's two-step "shorter side, then crop".
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from vae_jax import data
from vae_jax.data import DataError, load_dataset


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def _random_rgb(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rows_by_content(images):
    return {bytes(np.ascontiguousarray(im)): i for i, im in enumerate(images)}


def test_class_folders_give_sorted_labels_and_a_fixed_tenth_as_test(tmp_path):
    rng = np.random.default_rng(0)
    written = {}  # pixel bytes -> class name
    for name, count in [("zebra", 12), ("apple", 9), ("mango", 9)]:
        for i in range(count):
            im = _save(str(tmp_path / name / f"{i:03d}.png"), _random_rgb(rng, 6, 5))
            written[im.tobytes()] = name
    (tmp_path / "apple" / "notes.txt").write_text("not an image, skipped by extension")
    (tmp_path / "mango" / "nested").mkdir()
    written[_save(str(tmp_path / "mango" / "nested" / "deep.png"), _random_rgb(rng, 6, 5)).tobytes()] = "mango"

    ds = load_dataset(f"folder:{tmp_path}")
    again = load_dataset(f"folder:{tmp_path}")

    assert ds.class_names == ("apple", "mango", "zebra") and ds.num_classes == 3
    assert ds.train_pixels.dtype == np.uint8 and ds.image_shape == (6, 5, 3)
    assert (ds.num_train, ds.num_test) == (28, 3)  # round(10% of 31) images held out
    loaded = np.concatenate([ds.train_pixels, ds.test_pixels])
    labels = np.concatenate([ds.y_train, ds.y_test])
    # Train + test is exactly the set of written images (PNG is lossless), each with its folder's label.
    assert sorted(im.tobytes() for im in loaded) == sorted(written)
    for image, label in zip(loaded, labels, strict=True):
        assert ds.class_names[label] == written[image.tobytes()]
    # The split is shuffled (not the last class folder) and fixed from one load to the next.
    assert len(set(ds.y_test.tolist()) | set(ds.y_train[-3:].tolist())) > 1
    np.testing.assert_array_equal(again.test_pixels, ds.test_pixels)
    assert ds.summary()["class_names"] == ["apple", "mango", "zebra"]
    assert ds.summary()["stored_dtype"] == "uint8"


def test_a_test_subfolder_is_the_test_split(tmp_path):
    rng = np.random.default_rng(1)
    train = [_save(str(tmp_path / "train" / c / f"{i}.png"), _random_rgb(rng, 4, 4)) for c in "ab" for i in range(3)]
    test = [_save(str(tmp_path / "test" / "b" / "x.png"), _random_rgb(rng, 4, 4))]
    ds = load_dataset(f"folder:{tmp_path}")
    assert (ds.num_train, ds.num_test) == (6, 1)
    np.testing.assert_array_equal(ds.test_pixels[0], test[0])
    assert ds.y_test.tolist() == [1] and ds.class_names == ("a", "b")
    assert sorted(im.tobytes() for im in ds.train_pixels) == sorted(im.tobytes() for im in train)

    # Without train/: everything but test/ is the train split; loose images mean no labels.
    flat = tmp_path / "flat"
    for i in range(4):
        _save(str(flat / f"{i}.png"), _random_rgb(rng, 4, 4))
    _save(str(flat / "test" / "t.png"), _random_rgb(rng, 4, 4))
    ds = load_dataset(f"folder:{flat}")
    assert (ds.num_train, ds.num_test) == (4, 1) and ds.y_train is None and ds.class_names is None


def test_grayscale_folders_have_one_channel_and_mixed_ones_three(tmp_path):
    rng = np.random.default_rng(2)
    grays = [rng.integers(0, 256, (5, 5), dtype=np.uint8) for _ in range(10)]
    for i, g in enumerate(grays):
        _save(str(tmp_path / "gray" / f"{i}.png"), g)
    ds = load_dataset(f"folder:{tmp_path / 'gray'}")
    assert ds.image_shape == (5, 5, 1)
    loaded = np.concatenate([ds.train_pixels, ds.test_pixels])[..., 0]
    assert sorted(im.tobytes() for im in loaded) == sorted(g.tobytes() for g in grays)

    for i, g in enumerate(grays):
        _save(str(tmp_path / "mixed" / f"g{i}.png"), g)
    _save(str(tmp_path / "mixed" / "color.png"), _random_rgb(rng, 5, 5))
    ds = load_dataset(f"folder:{tmp_path / 'mixed'}")
    assert ds.image_shape == (5, 5, 3)
    loaded = np.concatenate([ds.train_pixels, ds.test_pixels])
    gray_rows = [im for im in loaded if np.all(im == im[..., :1])]
    assert sorted(im[..., 0].tobytes() for im in gray_rows) == sorted(g.tobytes() for g in grays)


def test_image_size_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    size = 8
    # Landscape and portrait images whose centre square is green and the margins red:
    # after the centre crop no red may be left away from the border.
    for name, (h, w) in {"wide": (20, 36), "tall": (30, 18)}.items():
        im = np.zeros((h, w, 3), np.uint8)
        im[..., 0] = 255
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        im[top : top + side, left : left + side] = (0, 255, 0)
        _save(str(tmp_path / "bands" / f"{name}.png"), im)
    ds = load_dataset(f"folder:{tmp_path / 'bands'}", image_size=size)
    for im in np.concatenate([ds.train_pixels, ds.test_pixels]):
        assert im.shape == (size, size, 3)
        assert im[1:-1, 1:-1, 0].max() < 40 and im[1:-1, 1:-1, 1].min() > 215

    # Smooth natural-like images against Pillow's two-step reference: shorter side to `size`, then crop.
    yy, xx = np.mgrid[0:40, 0:60]  # 40 -> 8 and 60 -> 12 exactly, so both methods crop the same square
    smooth = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0), (xx + yy) * 2], -1)
    smooth = np.clip(smooth, 0, 255).astype(np.uint8)
    for i in range(10):
        _save(str(tmp_path / "smooth" / f"{i}.png"), np.roll(smooth, 3 * i, axis=1))
    ds = load_dataset(f"folder:{tmp_path / 'smooth'}", image_size=size)
    for im in np.concatenate([ds.train_pixels, ds.test_pixels]):
        shifts = [np.roll(smooth, 3 * i, axis=1) for i in range(10)]
        refs = []
        for s in shifts:
            h, w = s.shape[:2]
            new_w = round(w * size / h)
            two_step = np.asarray(Image.fromarray(s).resize((new_w, size), Image.Resampling.BICUBIC), np.float64)
            left = (new_w - size) // 2
            refs.append(np.abs(two_step[:, left : left + size] - im).mean())
        assert min(refs) < 1.5  # gray levels, mean over pixels


def test_jpeg_folders_are_read(tmp_path):
    # 64x48 JPEGs (portrait, like aligned face crops) read at 16x16: decoded at a reduced
    # scale first (JPEG draft mode), then resampled. Compared with full decoding + resizing.
    base = np.clip(128 + 60 * np.sin(np.mgrid[0:64, 0:48][1] / 6.0), 0, 255).astype(np.uint8)
    os.makedirs(tmp_path / "faces", exist_ok=True)
    for i in range(10):
        image = np.stack([base, np.roll(base, 4 * i, axis=1), np.full_like(base, 20 * i)], -1)
        Image.fromarray(image).save(tmp_path / "faces" / f"{i}.jpg", quality=95)
    ds = load_dataset(f"folder:{tmp_path / 'faces'}", image_size=16)
    assert ds.image_shape == (16, 16, 3) and ds.train_pixels.dtype == np.uint8
    references = []
    for path in sorted((tmp_path / "faces").iterdir()):
        full = Image.open(path).convert("RGB")
        references.append(np.asarray(full.resize((16, round(64 * 16 / 48)), Image.Resampling.BICUBIC), np.float64))
    for im in np.concatenate([ds.train_pixels, ds.test_pixels]):
        top = (references[0].shape[0] - 16) // 2
        assert min(np.abs(r[top : top + 16] - im).mean() for r in references) < 4.0


@pytest.mark.parametrize("kind", ["truncated_png", "truncated_jpg", "text_as_jpg", "empty_png"])
def test_broken_files_are_one_line_errors_naming_the_file(tmp_path, kind):
    rng = np.random.default_rng(5)
    for i in range(5):
        _save(str(tmp_path / f"ok{i}.png"), _random_rgb(rng, 32, 32))
    if kind == "truncated_png":
        bad = tmp_path / "bad.png"
        _save(str(bad), _random_rgb(rng, 32, 32))
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif kind == "truncated_jpg":
        bad = tmp_path / "bad.jpg"
        Image.fromarray(_random_rgb(rng, 32, 32)).save(bad)
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif kind == "text_as_jpg":
        bad = tmp_path / "bad.jpg"
        bad.write_text("this is a text file, not a JPEG\n")
    else:
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_dataset(f"folder:{tmp_path}")
    message = str(err.value)
    assert "\n" not in message and str(bad) in message
    assert ("truncated" in message) if kind.startswith("truncated") else ("not a readable image" in message)


def test_folder_layout_errors(tmp_path):
    rng = np.random.default_rng(6)
    with pytest.raises(DataError, match="no such directory"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image files"):
        load_dataset(f"folder:{tmp_path / 'empty'}")

    _save(str(tmp_path / "sizes" / "a.png"), _random_rgb(rng, 8, 8))
    _save(str(tmp_path / "sizes" / "b.png"), _random_rgb(rng, 9, 8))
    with pytest.raises(DataError, match=r"images differ in size .*pass --image-size N") as err:
        load_dataset(f"folder:{tmp_path / 'sizes'}")
    assert "a.png is 8x8" in str(err.value) and "b.png is 9x8" in str(err.value)  # height x width
    assert load_dataset(f"folder:{tmp_path / 'sizes'}", image_size=4).image_shape == (4, 4, 3)

    for c in "ab":
        _save(str(tmp_path / "both" / c / "1.png"), _random_rgb(rng, 4, 4))
    _save(str(tmp_path / "both" / "loose.png"), _random_rgb(rng, 4, 4))
    with pytest.raises(DataError, match="holds both images .loose.png. and class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'both'}")

    for c in "ab":
        _save(str(tmp_path / "unseen" / "train" / c / "1.png"), _random_rgb(rng, 4, 4))
    for c in "ac":
        _save(str(tmp_path / "unseen" / "test" / c / "1.png"), _random_rgb(rng, 4, 4))
    with pytest.raises(DataError, match="test class folder 'c' has no train folder"):
        load_dataset(f"folder:{tmp_path / 'unseen'}")

    wide = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000
    os.makedirs(tmp_path / "wide", exist_ok=True)
    for i in range(3):
        Image.fromarray(wide).save(tmp_path / "wide" / f"{i}.png")
    with pytest.raises(DataError, match="16-bit or float.*only 8-bit images"):
        load_dataset(f"folder:{tmp_path / 'wide'}")


def test_binarized_folder_data_is_stored_as_uint8(tmp_path):
    for i in range(20):
        _save(str(tmp_path / f"{i}.png"), np.full((4, 4), 77, np.uint8))
    ds = load_dataset(f"folder:{tmp_path}", binarize="static")
    assert ds.train_pixels.dtype == np.uint8 and set(np.unique(ds.train_pixels)) <= {0, 255}
    np.testing.assert_allclose(ds.x_train.mean(), 77 / 255, atol=0.06)


def test_thread_pool_size_does_not_change_the_result(tmp_path):
    rng = np.random.default_rng(7)
    for i in range(30):
        _save(str(tmp_path / f"{i:02d}.png"), _random_rgb(rng, 12, 10))
    one = data.load_image_folder(str(tmp_path), image_size=6, max_workers=1)
    many = data.load_image_folder(str(tmp_path), image_size=6, max_workers=8)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[2], many[2])


def test_splits_from_class_folders_are_listed_in_a_mixed_order(tmp_path):
    """Listed class by class, the test split would show one class in every figure; it comes shuffled."""
    rng = np.random.default_rng(8)
    for split, count in (("train", 10), ("test", 10)):
        for c in "abc":
            for i in range(count):
                _save(str(tmp_path / split / c / f"{i}.png"), _random_rgb(rng, 3, 3))
    ds = load_dataset(f"folder:{tmp_path}")
    for labels in (ds.y_train, ds.y_test):
        assert np.bincount(labels).tolist() == [10, 10, 10]
        assert np.any(np.diff(labels) < 0)  # not sorted by class
        assert len(set(labels[:6].tolist())) > 1


def test_decode_once_writes_a_mapped_copy_that_equals_the_folder_and_is_reused_until_the_source_changes(
    tmp_path, monkeypatch
):
    """``runner.decode_once`` (what every process of a --distributed run loads a folder or TFDS dataset through):
    the same arrays, labels and class names as reading the folder directly, memory-mapped from the workdir's
    copy; a second load does not decode; another --image-size, or a file added to the folder, decodes again;
    --binarize static gives the direct load's draws."""
    from vae_jax import runner, tasks

    rng = np.random.default_rng(3)
    for cls in ("cat", "dog"):
        for i in range(12):
            _save(str(tmp_path / "pets" / cls / f"{i}.png"), _random_rgb(rng, 20, 24))
    spec = f"folder:{tmp_path / 'pets'}"
    workdir = str(tmp_path / "run")

    def config(**kw):
        return tasks.VAEConfig(**{"dataset": spec, "workdir": workdir, "batch_size": 4, "image_size": 16, **kw})

    direct = load_dataset(spec, image_size=16)
    decoded = runner.decode_once(config())
    assert decoded.memory_mapped and decoded.source == direct.source == spec
    assert decoded.class_names == direct.class_names == ("cat", "dog")
    assert decoded.record() == direct.record()  # what data.json records: the same in every process
    for name in ("train_pixels", "y_train", "test_pixels", "y_test"):
        np.testing.assert_array_equal(getattr(decoded, name), getattr(direct, name))
    copy = os.path.join(workdir, data.DECODED_DATA)
    assert data.read_npz_notes(copy)["key"] == data.decoded_data_key(config())
    reread = data.decoded_copy(config())  # what experiments.evaluate reads for this run
    assert reread.memory_mapped and reread.source == spec
    np.testing.assert_array_equal(reread.test_pixels, direct.test_pixels)
    assert data.decoded_copy(config(image_size=8)) is None  # another key: not this copy

    decodes = []  # the folder's listings and headers read (what precedes each decode)
    real_plan = data.folder.plan_image_folder
    monkeypatch.setattr(data.folder, "plan_image_folder", lambda *a, **k: decodes.append(a) or real_plan(*a, **k))
    again = runner.decode_once(config())
    assert decodes == [] and again.memory_mapped
    np.testing.assert_array_equal(again.train_pixels, direct.train_pixels)

    assert runner.decode_once(config(image_size=8)).image_shape == (8, 8, 3) and len(decodes) == 1
    _save(str(tmp_path / "pets" / "dog" / "new.png"), _random_rgb(rng, 20, 24))
    grown = runner.decode_once(config(image_size=8))
    assert len(decodes) == 2 and grown.num_train + grown.num_test == 25

    static = runner.decode_once(config(image_size=8, binarize="static"))
    assert len(decodes) == 2  # the binarization is applied to the copy, not baked into it
    direct_static = load_dataset(spec, image_size=8, binarize="static")
    np.testing.assert_array_equal(static.train_pixels, direct_static.train_pixels)
    np.testing.assert_array_equal(static.test_pixels, direct_static.test_pixels)


def test_decode_once_errors_are_one_line(tmp_path):
    from vae_jax import runner, tasks
    from vae_jax.errors import ConfigError

    _save(str(tmp_path / "faces" / "a.png"), np.zeros((8, 8), np.uint8))
    _save(str(tmp_path / "faces" / "b.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^--workdir .*file/run: not a writable directory"):
        runner.decode_once(
            tasks.VAEConfig(
                dataset=f"folder:{tmp_path / 'faces'}", workdir=str(tmp_path / "file" / "run"), batch_size=1
            )
        )
    with pytest.raises(DataError, match=r"^--dataset folder:.*missing: no such directory$"):
        runner.decode_once(
            tasks.VAEConfig(dataset=f"folder:{tmp_path / 'missing'}", workdir=str(tmp_path / "run"), batch_size=1)
        )
    assert data.read_npz_notes(str(tmp_path / "faces" / "a.png")) is None  # not an archive: no notes


def test_decode_once_keeps_the_source_and_keys_tfds_sets_by_whether_they_are_prepared(tmp_path, monkeypatch):
    from vae_jax import runner, tasks

    config = tasks.VAEConfig(dataset="mnist:embedded", workdir=str(tmp_path / "run"))
    decoded, direct = runner.decode_once(config), load_dataset("mnist:embedded")
    assert decoded.source == direct.source == data.EMBEDDED_MNIST_SOURCE and decoded.memory_mapped
    np.testing.assert_array_equal(decoded.test_pixels, direct.test_pixels)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    mnist = tasks.VAEConfig(dataset="mnist")
    assert data.decoded_data_key(mnist)["tfds_prepared"] is False  # offline: the embedded digits stand in
    os.makedirs(tmp_path / "tfds" / "mnist" / "3.0.1")
    (tmp_path / "tfds" / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    assert data.decoded_data_key(mnist)["tfds_prepared"] is True  # so a copy of the embedded ones is not reused


def test_save_image_folder_npz_decodes_a_chunk_at_a_time_into_the_archive_save_npz_would_write(tmp_path):
    """Chunks of 7 rows (the splits' 21 and 3 images: whole and partial chunks): the archive holds the folder's
    arrays, labels and class names, maps (the images stay on disk) and reads back through np.load's checked
    path (zip CRCs) too."""
    rng = np.random.default_rng(5)
    for cls in ("ant", "bee", "cow"):
        for i in range(8):
            _save(str(tmp_path / "zoo" / cls / f"{i}.png"), _random_rgb(rng, 9, 11))
    direct = load_dataset(f"folder:{tmp_path / 'zoo'}", image_size=6)
    path = data.save_image_folder_npz(
        str(tmp_path / "zoo"),
        str(tmp_path / "zoo.npz"),
        image_size=6,
        notes={"made": "here"},
        chunk_bytes=7 * 6 * 6 * 3,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo", "zoo.npz"]  # no temporary file left
    assert data.read_npz_notes(path) == {"made": "here"}
    for memory_map in (True, False):
        back = load_dataset(f"npz:{path}", memory_map=memory_map)
        assert back.memory_mapped == memory_map and back.class_names == ("ant", "bee", "cow")
        for name in ("train_pixels", "y_train", "test_pixels", "y_test"):
            np.testing.assert_array_equal(getattr(back, name), getattr(direct, name))
    with np.load(path) as archive:  # every member's CRC checked
        assert sorted(archive.files) == ["class_names", "vae_jax_notes", "x_test", "x_train", "y_test", "y_train"]
        np.testing.assert_array_equal(archive["x_train"], direct.train_pixels)


def _folder_with_two_broken_files(folder, rng, count=9):
    """``count`` good 6x6 RGB PNGs (returned as arrays) and two broken files: an empty one (its header cannot be
    read) and a truncated one (its header reads, its pixels do not); returns (good arrays, broken paths)."""
    good = [_save(str(folder / f"{i:02d}.png"), _random_rgb(rng, 6, 6)) for i in range(count)]
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    cut = folder / "cut.png"
    _save(str(cut), _random_rgb(rng, 6, 6))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    return good, sorted([str(empty), str(cut)])


def test_skip_unreadable_leaves_out_broken_files_lists_them_and_keeps_the_rest(tmp_path, capsys):
    from vae_jax import runner, tasks

    good, broken = _folder_with_two_broken_files(tmp_path / "photos", np.random.default_rng(11))
    spec = f"folder:{tmp_path / 'photos'}"
    with pytest.raises(DataError) as err:
        load_dataset(spec)
    assert "\n" not in str(err.value) and "pass --skip-unreadable" in str(err.value)
    assert any(path in str(err.value) for path in broken)

    ds = load_dataset(spec, skip_unreadable=True, batch_size=4)
    logged = capsys.readouterr().err
    assert sorted(ds.skipped) == broken
    assert ds.summary()["skipped_unreadable"] == {"count": 2, "files": list(ds.skipped)}
    assert all(path in logged for path in broken) and "left out 2 unreadable files" in logged
    assert "not a readable image" in logged and "cannot be decoded" in logged  # both kinds of failure
    kept = sorted(bytes(im) for im in np.concatenate([ds.train_pixels, ds.test_pixels]))
    assert kept == sorted(bytes(im) for im in good)  # exactly the good files, each once, as PIL decodes them
    assert ds.num_test >= 1

    with pytest.raises(
        DataError,
        match=f"the train split has {ds.num_train} examples after --skip-unreadable left "
        f"out 2 files, fewer than one batch \\(--batch-size 100\\)",
    ):
        load_dataset(spec, skip_unreadable=True, batch_size=100)

    # A --distributed run's decoded copy leaves out the same files and remembers them.
    config = tasks.VAEConfig(dataset=spec, workdir=str(tmp_path / "run"), batch_size=4, skip_unreadable=True)
    decoded = runner.decode_once(config)
    assert sorted(decoded.skipped) == broken and decoded.record() == ds.record()


def test_skip_unreadable_refuses_a_split_left_without_images(tmp_path):
    rng = np.random.default_rng(12)
    for i in range(4):
        _save(str(tmp_path / "train" / f"{i}.png"), _random_rgb(rng, 4, 4))
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "only.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="left the test split without images"):
        load_dataset(f"folder:{tmp_path}", skip_unreadable=True)


def test_skip_unreadable_through_a_training_run(tmp_path, capsys):
    from experiments import vae as vae_exp

    _, broken = _folder_with_two_broken_files(tmp_path / "photos", np.random.default_rng(13), count=12)
    flags = [
        "--dataset",
        f"folder:{tmp_path / 'photos'}",
        "--workdir",
        str(tmp_path / "run"),
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--latent-dim",
        "2",
        "--no-tensorboard",
    ]
    with pytest.raises(SystemExit) as stop:
        vae_exp.main(flags)
    assert stop.value.code == 2 and "pass --skip-unreadable" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    vae_exp.main(flags + ["--skip-unreadable"])
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert sorted(summary["dataset"]["skipped_unreadable"]["files"]) == broken
    reconstruct_with_the_runs_data_flags(tmp_path / "run", tmp_path / "photos", capsys)


def reconstruct_with_the_runs_data_flags(run, folder, capsys):
    """experiments.reconstruct on a --skip-unreadable run: its own data is read as it trained (the broken files
    left out), equal to load_run's reconstruction of the folder loaded directly; a changed folder is refused."""
    from experiments import reconstruct
    from vae_jax import export_run, load_run

    out = str(run / "recon.png")
    result = reconstruct.main(["--workdir", str(run), "--out", out])
    x = load_dataset(f"folder:{folder}", skip_unreadable=True).x_test
    expected = np.mean(np.square(load_run(str(run)).reconstruct(x) - x), axis=(1, 2, 3))
    np.testing.assert_allclose(result["errors"], expected, rtol=1e-6)
    with pytest.raises(SystemExit) as stop:  # the run's setting overridden: the broken files stop it
        reconstruct.main(["--workdir", str(run), "--out", out, "--no-skip-unreadable"])
    assert stop.value.code == 2 and "pass --skip-unreadable" in capsys.readouterr().err
    exported = str(run / "model.msgpack")
    export_run(str(run), exported)  # it carries the record of the data the run trained on
    _save(str(folder / "new.png"), _random_rgb(np.random.default_rng(1), 6, 6))  # the run's data changes
    for source in (str(run), exported):
        with pytest.raises(SystemExit) as stop:
            reconstruct.main(["--workdir", source, "--out", out])
        line = capsys.readouterr().err.splitlines()[-1]  # after the lines listing the files left out
        assert stop.value.code == 2 and line.startswith("error: --dataset folder:"), line
        assert f"--workdir {source} was trained on " in line and "pass --dataset" in line
    asked = reconstruct.main(["--workdir", str(run), "--out", out, "--dataset", f"folder:{folder}"])
    assert len(asked["errors"]) == len(load_dataset(f"folder:{folder}", skip_unreadable=True).x_test)


def test_the_resizing_line_lists_three_sizes_and_counts_the_rest(capsys):
    from vae_jax.data.resize import log_resizing

    sizes = {(30, 20), (40, 20), (50, 20), (60, 20), (70, 20), (28, 28)}  # (width, height); 28x28 is kept
    log_resizing("folder:x", sizes, 28)
    line = capsys.readouterr().err
    assert "images of 20x30, 20x40, 20x50 and 2 more sizes are resized to 28x28" in line
    log_resizing("folder:x", {(30, 20), (28, 28)}, 28)
    assert "images of 20x30 are resized" in capsys.readouterr().err
