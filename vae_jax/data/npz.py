"""``npz:PATH`` archives: read (optionally memory-mapped), written (:func:`save_npz`) and their notes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
import zipfile

import numpy as np

from vae_jax.data.dataset import Dataset, reason, split_last
from vae_jax.errors import DataError

_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _mapped_npz_member(path: str, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Member ``info`` of the ``.npz`` at ``path`` as a read-only memory map, or None when it cannot be mapped.

    NumPy cannot map a member of an ``.npz``, but ``np.savez`` stores each array as an uncompressed ``.npy``
    file inside the zip, so its bytes lie in the archive as they are: after the zip's local header (30 bytes,
    the name, an extra field) and the ``.npy`` header. Compressed members (``np.savez_compressed``), object
    arrays and ``.npy`` header versions other than 1.0 and 2.0 are read instead (None).
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
        read_header = _NPY_HEADER_READERS.get(np.lib.format.read_magic(f))
        if read_header is None:
            return None
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        return None
    if offset + dtype.itemsize * math.prod(shape) > os.path.getsize(path):
        raise ValueError(f"{info.filename} runs past the end of the file")
    return np.memmap(path, dtype, "r", offset, shape, order="F" if fortran_order else "C")


def load_npz(path: str, memory_map: bool = False):
    """The arrays of the archive ``path``: ``((x_train, y_train, x_test, y_test), class_names)``, the
    images memory-mapped where they can be with ``memory_map`` (:func:`_mapped_npz_member`)."""
    with _open_npz(path) as archive:
        keys = set(archive.files)

        def read(key: str) -> np.ndarray | None:
            return _read_member(path, archive, key, memory_map) if key in keys else None

        class_names = _class_names(path, read("class_names")) if "class_names" in keys else None
        if {"x_train", "x_test"} <= keys:
            return (read("x_train"), read("y_train"), read("x_test"), read("y_test")), class_names
        if "x" in keys:
            x, y = read("x"), read("y")
            if np.ndim(x) < 1 or (y is not None and (np.ndim(y) < 1 or len(y) != len(x))):
                raise DataError(
                    f"--dataset npz:{path}: y has {np.shape(y)[0] if np.ndim(y) else 0} labels "
                    f"but x has {len(x) if np.ndim(x) else 0} images"
                )
            return split_last(x, y), class_names
    raise DataError(
        f"--dataset npz:{path}: expected arrays x_train, y_train, x_test, y_test or x (and y); "
        f"found {', '.join(sorted(keys)) or 'none'}"
    )


def _open_npz(path: str):
    """``np.load(path)`` of an ``.npz`` archive (its members not read yet), or a one-line DataError."""
    if not path:
        raise DataError("--dataset npz: needs a file path, e.g. npz:data/mnist.npz")
    if not os.path.isfile(path):
        raise DataError(f"--dataset npz:{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # zipfile / pickle / format errors
        raise DataError(f"--dataset npz:{path}: not a readable .npz archive ({reason(err)})") from None
    if not hasattr(archive, "files"):  # np.load also opens a bare .npy array
        raise DataError(f"--dataset npz:{path}: a single .npy array, not a .npz archive of named arrays")
    return archive


def _read_member(path: str, archive, key: str, memory_map: bool) -> np.ndarray:
    """The array ``key`` of the open ``archive``, memory-mapped when asked and possible."""
    # Members are read lazily: a truncated or corrupted archive fails here, not in np.load.
    try:
        if memory_map:
            mapped = _mapped_npz_member(path, archive.zip.getinfo(key + ".npy"))
            if mapped is not None:
                return mapped
        return archive[key]
    except Exception as err:
        raise DataError(
            f"--dataset npz:{path}: array {key!r} cannot be read, the file is truncated or corrupted ({reason(err)})"
        ) from None


def _class_names(path: str, names: np.ndarray) -> tuple[str, ...]:
    if names.ndim != 1 or not names.size or names.dtype.kind != "U":
        raise DataError(
            f"--dataset npz:{path}: class_names must be a 1-D array of strings, got {names.dtype} of shape {names.shape}"
        )
    return tuple(names.tolist())


NOTES_MEMBER = "vae_jax_notes"  # an npz member that save_npz may add: a JSON object as a 0-d string array


def save_npz(dataset: Dataset, path: str, notes: dict | None = None) -> str:
    """Writes ``dataset`` to ``path`` as an uncompressed ``.npz`` that ``--dataset npz:PATH`` reads back.

    The arrays are stored as they are (``uint8`` stays ``uint8``), with ``class_names`` when known.
    Uncompressed, so that ``load_dataset(..., memory_map=True)`` (``--stream``, ``--distributed``) maps it and
    each process reads from disk only the rows it uses. Written beside ``path`` and renamed into place, so an
    interrupted write never leaves a half archive. ``notes`` (a JSON-serialisable dict) is stored beside the
    arrays and read back by :func:`read_npz_notes`; loading ignores it. Returns ``path``.
    """
    small = small_members(dataset.y_train, dataset.y_test, dataset.class_names, notes)
    with atomic_file(path) as f:
        np.savez(f, x_train=dataset.train_pixels, x_test=dataset.test_pixels, **small)
    return path


def small_members(y_train, y_test, class_names, notes: dict | None) -> dict[str, np.ndarray]:
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
def atomic_file(path: str):
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
    notes = None
    with contextlib.suppress(Exception):  # OSError, zipfile and format errors, bad JSON: no usable notes
        with np.load(path, allow_pickle=False) as archive:
            notes = json.loads(str(archive[NOTES_MEMBER])) if NOTES_MEMBER in archive.files else None
    return notes if isinstance(notes, dict) else None
