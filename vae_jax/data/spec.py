"""The spec parser: ``--dataset SPEC`` (and ``--binarize``, ``--image-size``) -> a checked :class:`Dataset`.

Each source lives in its own module (:mod:`.mnist`, :mod:`.tfds`, :mod:`.npz`, :mod:`.folder`); this one
picks the source, checks the arrays it gives and binarizes them.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import numpy as np

from vae_jax.arrays import pixels_to_float
from vae_jax.data import folder, mnist, npz, tfds
from vae_jax.data.dataset import EMBEDDED_MNIST_SOURCE, Dataset, data_fingerprint, rows_per_chunk
from vae_jax.data.resize import log_resizing, resize_center_crop
from vae_jax.errors import DataError

BINARIZE_CHOICES = ("none", "dynamic", "static")
SPECS = ("mnist", "mnist:embedded", "tfds:NAME", "npz:PATH", "folder:PATH")
_STATIC_BINARIZE_SEED = 0
MAX_IMAGE_SIZE = 4096  # a 4096 x 4096 x 3 uint8 image is 48 MiB; larger sides are a typo, not a dataset


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
      memory_map: memory-map ``npz:`` archives written uncompressed (``np.savez``, :func:`save_npz`), so a
        row is read from disk when it is used (``--stream``, ``--distributed``). ``uint8`` and float32 images
        stay mapped (float32 range-checked a chunk at a time); other dtypes, resizing and static binarization
        make in-memory copies. Mapped members are not CRC-checked (that would read the whole file).
      skip_unreadable: ``folder:`` datasets leave out the files that cannot be decoded (listed in
        :attr:`Dataset.skipped` and on stderr) instead of stopping at the first one.

    Raises:
      DataError: with a one-line message naming the problem.
    """
    _check_flags(spec, binarize, image_size)
    arrays, source, class_names, skipped = _read_source(spec, data_dir, image_size, memory_map, skip_unreadable)
    x_train, y_train, x_test, y_test = _checked_arrays(arrays, spec, source, image_size, class_names)
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


def _check_flags(spec: str, binarize: str, image_size: int) -> None:
    """The flags' own checks, before any data is read."""
    if binarize not in BINARIZE_CHOICES:
        raise DataError(f"--binarize must be one of {', '.join(BINARIZE_CHOICES)}, got {binarize!r}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 0 or image_size > MAX_IMAGE_SIZE:
        raise DataError(
            f"--image-size must be 0 (keep the images' size) or a side length from 1 to "
            f"{MAX_IMAGE_SIZE} pixels, got {image_size!r}"
        )
    if not isinstance(spec, str) or not spec:
        raise DataError(f"--dataset must be one of {', '.join(SPECS)}, got an empty spec")


def _read_source(spec: str, data_dir: str | None, image_size: int, memory_map: bool, skip_unreadable: bool):
    """``((x_train, y_train, x_test, y_test), source, class_names, skipped)`` of ``spec``, not yet checked."""
    if spec == "mnist":
        return (*mnist.load_mnist(data_dir), None, ())
    if spec == "mnist:embedded":
        return mnist.embedded_mnist(), EMBEDDED_MNIST_SOURCE, None, ()
    if spec.startswith("tfds:"):
        name = spec[len("tfds:") :]
        if not name:
            raise DataError("--dataset tfds: needs a dataset name, e.g. tfds:fashion_mnist")
        return tfds.load_tfds(name, data_dir, image_size), spec, None, ()
    if spec.startswith("npz:"):
        arrays, class_names = npz.load_npz(spec[len("npz:") :], memory_map)
        return arrays, spec, class_names, ()
    if spec.startswith("folder:"):
        loaded = folder.load_image_folder(spec[len("folder:") :], image_size, skip_unreadable=skip_unreadable)
        return loaded[:4], spec, loaded[4], loaded[5]
    raise DataError(f"--dataset must be one of {', '.join(SPECS)}, got {spec!r}{_spec_suggestion(spec)}")


def _checked_arrays(arrays, spec: str, source: str, image_size: int, class_names: tuple[str, ...] | None):
    """A source's ``(x_train, y_train, x_test, y_test)`` checked and resized to ``image_size``."""
    x_train, y_train, x_test, y_test = arrays
    x_train = _as_images(x_train, "x_train", source)
    x_test = _as_images(x_test, "x_test", source)
    if image_size:
        if not spec.startswith(("folder:", "tfds:")):  # those two resize as they decode, and log it there
            log_resizing(source, {(x.shape[2], x.shape[1]) for x in (x_train, x_test)}, image_size)
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
    return x_train, y_train, x_test, y_test


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


def _bernoulli(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """One Bernoulli draw per pixel with p = the pixel's value in [0, 1]; ``uint8`` 0 or 255. Drawn a chunk of
    images at a time, so a large split never exists as float32."""
    out = np.empty(pixels.shape, np.uint8)
    chunk = rows_per_chunk(pixels.shape)
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
    chunk = rows_per_chunk(x.shape)
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
    if not np.issubdtype(y.dtype, np.integer) and (not np.all(np.isfinite(y)) or np.any(y != np.round(y))):
        raise DataError(f"{source}: {name} must hold integer class labels")
    if y.size and y.min() < 0:
        raise DataError(f"{source}: {name} must hold non-negative class labels, got {y.min()}")
    return y.astype(np.int32)
