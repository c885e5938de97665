"""Start-up: the embedded-digits spec, the remembered TFDS probe, no TFDS import on the offline path,
quiet TFDS warnings, and dataset-spec errors that suggest the fix."""

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from vae_jax import data
from vae_jax.data import DataError, load_dataset


def test_mnist_embedded_is_the_embedded_digits_without_any_probe(monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("mnist:embedded must not probe the network")

    monkeypatch.setattr(data.tfds, "_tfds_reachable", no_probe)
    ds = load_dataset("mnist:embedded")
    x_train, _, x_test, _ = data.embedded_mnist()
    assert ds.source == data.EMBEDDED_MNIST_SOURCE
    assert ds.x_train.shape == (4500, 28, 28, 1) and ds.x_test.shape == (500, 28, 28, 1)
    assert (ds.x_train[..., 0] * 255).round().astype(int).tolist()[:3] == x_train[:3].astype(int).tolist()


def test_probe_answer_is_remembered_for_an_hour(monkeypatch):
    calls = []
    monkeypatch.setattr(data.tfds, "_tfds_reachable", lambda timeout=3.0: calls.append(1) or False)
    assert data.tfds_reachable_cached() is False
    assert data.tfds_reachable_cached() is False
    assert len(calls) == 1  # the second answer came from the cache file
    with open(data.probe_cache_path()) as f:
        cached = json.load(f)
    assert cached["reachable"] is False and abs(cached["time"] - time.time()) < 60
    # An answer older than its lifetime is asked again.
    cached["time"] = time.time() - data.PROBE_CACHE_SECONDS - 1
    with open(data.probe_cache_path(), "w") as f:
        json.dump(cached, f)
    assert data.tfds_reachable_cached() is False and len(calls) == 2
    # A cache file that cannot be read is no error: the host is asked.
    with open(data.probe_cache_path(), "w") as f:
        f.write("not json")
    assert data.tfds_reachable_cached() is False and len(calls) == 3


def test_offline_mnist_falls_back_without_importing_tensorflow(tmp_path):
    """With a remembered 'unreachable' and nothing prepared, ``mnist`` needs neither TFDS nor TensorFlow."""
    cache = tmp_path / "cache"
    cache.mkdir()
    with open(cache / "tfds_probe.json", "w") as f:
        json.dump({"host": "{}:{}".format(*data.tfds._TFDS_DOWNLOAD_HOST), "reachable": False, "time": time.time()}, f)
    code = (
        "import sys; from vae_jax import data; ds = data.load_dataset('mnist', data_dir=sys.argv[1]); "
        "print(ds.source); print('tensorflow' in sys.modules, 'tensorflow_datasets' in sys.modules)"
    )
    env = {**os.environ, "VAE_JAX_CACHE_DIR": str(cache)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "tfds")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert result.stdout.splitlines() == [data.EMBEDDED_MNIST_SOURCE, "False False"]
    assert result.stderr.count("\n") == 1 and "mnist:embedded" in result.stderr  # one warning line
    assert "dataset_info.json" not in result.stderr


def test_prepared_on_disk_looks_for_dataset_info(tmp_path):
    assert not data.tfds_prepared_on_disk("mnist", str(tmp_path))
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    assert not data.tfds_prepared_on_disk("mnist", str(tmp_path))  # an incomplete variant folder
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    assert data.tfds_prepared_on_disk("mnist", str(tmp_path))


def test_incomplete_variant_warning_is_dropped():
    data.tfds._import_tfds()
    logger = logging.getLogger("absl")
    record = logging.LogRecord(
        "absl", logging.WARNING, __file__, 1, "Variant folder /x/mnist/3.0.1 has no dataset_info.json", None, None
    )
    other = logging.LogRecord("absl", logging.WARNING, __file__, 1, "something else", None, None)
    assert not logger.filter(record) and logger.filter(other)


@pytest.mark.parametrize(
    "spec, hint",
    [
        ("digits.npz", "for a file write npz:digits.npz"),
        ("data/mine", "for a file write npz:data/mine"),
        ("mnsit", "did you mean mnist?"),
        ("mnist:embeded", "did you mean mnist:embedded?"),
        ("tdfs:fashion_mnist", "did you mean tfds:fashion_mnist?"),
        ("fashion_mnist", "for a TFDS dataset write tfds:fashion_mnist"),
    ],
)
def test_unknown_specs_suggest_the_fix(spec, hint):
    with pytest.raises(DataError) as info:
        load_dataset(spec)
    message = str(info.value)
    assert "\n" not in message and message.startswith("--dataset must be one of mnist, mnist:embedded")
    assert message.endswith(hint)


def test_unknown_tfds_name_suggests_close_names():
    with pytest.raises(DataError) as info:
        load_dataset("tfds:fashion_mnst")
    assert "did you mean tfds:fashion_mnist" in str(info.value) and "\n" not in str(info.value)


def test_the_tensorboard_writer_starts_without_importing_pytorch(tmp_path):
    """tensorboardX would import PyTorch (seconds) when installed; the writer skips it and still writes events."""
    pytest.importorskip("torch")
    code = (
        "import sys; from vae_jax import tensorboard; w = tensorboard.EpochWriter(sys.argv[1]); "
        "w.log_epoch({'epoch': 1, 'seconds': 0.5, 'train_loss': 2.0}, [0]); w.close(); "
        "print('torch' in sys.modules); import torch; print(torch.ones(2).sum().item())"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "2.0"]  # not imported by the writer; importable afterwards
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
