"""``tfds:NAME`` datasets, and whether TFDS can have one quickly: prepared on disk, or its download host
answers (the answer remembered for an hour in the user cache). TensorFlow is imported only to read."""

from __future__ import annotations

import contextlib
import difflib
import glob
import json
import logging
import os
import socket
import threading
import time

import numpy as np

from vae_jax import compiling
from vae_jax.data.dataset import split_last
from vae_jax.data.resize import log_resizing, resize_center_crop
from vae_jax.errors import DataError

# TFDS downloads MNIST-like datasets from this host; if it cannot be reached within a few seconds we fall back
# instead of hanging on a network time-out.
_TFDS_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
_REACHABLE_TIMEOUT_S = 3.0
PROBE_CACHE_SECONDS = 3600.0  # how long a probe's answer is trusted before the host is asked again


def probe_cache_path() -> str:
    """Where the TFDS probe's answer is remembered: ``tfds_probe.json`` in :func:`vae_jax.compiling.user_cache_dir`."""
    return os.path.join(compiling.user_cache_dir(), "tfds_probe.json")


def tfds_reachable_cached(max_age: float = PROBE_CACHE_SECONDS) -> bool:
    """:func:`_tfds_reachable`, answered from the cache file when its answer is younger than ``max_age`` s
    (when the cache cannot be read or written the host is simply asked)."""
    path = probe_cache_path()
    host = "{}:{}".format(*_TFDS_DOWNLOAD_HOST)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        with open(path) as f:
            cached = json.load(f)
        if cached["host"] == host and 0 <= time.time() - float(cached["time"]) < max_age:
            return bool(cached["reachable"])
    reachable = _tfds_reachable()
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump({"host": host, "reachable": reachable, "time": time.time()}, f)
        os.replace(path + ".tmp", path)
    return reachable


def tfds_prepared_on_disk(name: str, data_dir: str | None) -> bool:
    """True if ``name`` looks prepared under the TFDS data dir (a ``dataset_info.json`` in a version folder):
    a file-system check, so the offline case decides without importing TensorFlow; TFDS has the last word."""
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    return bool(glob.glob(os.path.join(root, name, "*", "dataset_info.json")))


def _tfds_reachable(timeout: float = _REACHABLE_TIMEOUT_S) -> bool:
    """True if the TFDS download host answers within ``timeout`` seconds. DNS resolution has no time-out of
    its own, so the probe runs in a daemon thread that is abandoned when the time is up."""
    connected: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection(_TFDS_DOWNLOAD_HOST, timeout=timeout):
            connected.append(True)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(connected)


def _drop_incomplete_variant_warnings(record: logging.LogRecord) -> bool:
    """A log filter that drops TFDS's "Variant folder ... has no dataset_info.json" warning: an unprepared
    dataset is expected here (downloaded or replaced by the embedded digits) and reported in our own words."""
    return "has no dataset_info.json" not in record.getMessage()


def _import_tfds():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").addFilter(_drop_incomplete_variant_warnings)  # once: a filter already there is skipped
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences a start-up notice; TF only reads data here
    import tensorflow_datasets as tfds  # heavy: imported only here

    # Keep TensorFlow off the accelerators: JAX owns them. An error (already initialised, no GPU support) is harmless.
    with contextlib.suppress(Exception):
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    return tfds


def tfds_builder(name: str, data_dir: str | None):
    tfds = _import_tfds()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError and friends
        text = str(err).strip()
        first_line = text.splitlines()[0] if text else type(err).__name__
        # TFDS lists the available names as "\t- name" lines after its first line.
        available = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")]
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join('tfds:' + c for c in close)}?" if close else ""
        raise DataError(f"--dataset tfds:{name}: unknown TFDS dataset ({first_line}){hint}") from None


def load_tfds(name: str, data_dir: str | None, image_size: int = 0):
    builder = tfds_builder(name, data_dir)
    if not builder.is_prepared():
        if not tfds_reachable_cached():
            raise DataError(
                f"--dataset tfds:{name}: not prepared in {builder.data_dir_root} and the TFDS "
                "download host cannot be reached; prepare it on a machine with internet or pass "
                "--data-dir where it is prepared"
            )
        builder.download_and_prepare()
    return tfds_arrays(builder, name, image_size)


def tfds_arrays(builder, name: str, image_size: int = 0):
    """The splits of a prepared TFDS image dataset as ``uint8`` arrays, read in batches of at most ~256 MB;
    with ``image_size`` each batch is resized and centre-cropped as it arrives, so a set of large images
    (CelebA: 162,770 train images of 218x178x3, 19 GB) is never held at full size."""
    tfds = _import_tfds()
    features = builder.info.features
    if "image" not in features:
        raise DataError(f"--dataset tfds:{name}: has no 'image' feature; not an image dataset")
    image_shape = tuple(features["image"].shape)
    if None in image_shape:
        raise DataError(
            f"--dataset tfds:{name}: images of varying size {image_shape} are not supported; "
            "export them to a directory and use --dataset folder:PATH --image-size N"
        )
    if image_size:
        log_resizing(f"tfds:{name}", {(image_shape[1], image_shape[0])}, image_size)
    read_batch = int(min(10_000, max(1, (1 << 28) // int(np.prod(image_shape)))))
    # Integer class labels only: LFW's "label" is a person's name (a Text feature).
    label_key = "label" if "label" in features and isinstance(features["label"], tfds.features.ClassLabel) else None
    # A prepared dataset lists its splits; TFDS's mock data leaves them unknown.
    splits = set(builder.info.splits.keys()) or {"train", "test"}
    if "train" not in splits:
        raise DataError(f"--dataset tfds:{name}: has no 'train' split (splits: {sorted(splits)})")

    def read(split: str):
        images, labels = [], []
        for batch in tfds.as_numpy(builder.as_dataset(split=split, batch_size=read_batch)):
            batch_images = np.asarray(batch["image"])
            if batch_images.ndim == 3:
                batch_images = batch_images[..., None]
            images.append(resize_center_crop(batch_images, image_size) if image_size else batch_images)
            if label_key:
                labels.append(batch[label_key])
        if not images:
            raise DataError(f"--dataset tfds:{name}: the {split!r} split is empty")
        return np.concatenate(images), (np.concatenate(labels) if label_key else None)

    x_train, y_train = read("train")
    return (x_train, y_train, *read("test")) if "test" in splits else split_last(x_train, y_train)
