"""Decode once for several hosts: process 0 decodes a dataset into the workdir, every process maps that copy.

A TFDS dataset or an image folder is decoded whole before any row can be used, so every process of a
``--distributed`` run would hold all of it (CelebA at 128 px: about 8 GB a process). Instead process 0
decodes it (with ``--image-size``; a folder a chunk at a time straight into the file) and writes it
uncompressed with the :func:`decoded_data_key` it was made from; every process then maps that file
(``memory_map``) and applies ``--binarize``: the same arrays as loading the source directly.

The processes' barrier comes in as a callable (``wait_for_all``; ``vae_jax.runner.decode_once`` passes
JAX's), so this module needs nothing of the training driver.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Protocol

from vae_jax.data.dataset import Dataset
from vae_jax.data.folder import save_image_folder_npz
from vae_jax.data.folder_plan import folder_fingerprint
from vae_jax.data.npz import read_npz_notes, save_npz
from vae_jax.data.spec import load_dataset
from vae_jax.data.tfds import tfds_prepared_on_disk
from vae_jax.errors import ConfigError, DataError, require_writable_dir

DECODED_DATA = ".decoded-data.npz"  # in the workdir; hidden, so --overwrite leaves it for the next run


class DataFlags(Protocol):
    """The flags that say which data a run reads (a ``TrainConfig`` has them all)."""

    dataset: str
    data_dir: str
    image_size: int
    skip_unreadable: bool
    binarize: str
    batch_size: int
    workdir: str


def decoded_data_key(flags: DataFlags) -> dict:
    """What the decoded copy in the workdir was made from: the dataset flags; for ``folder:`` the files'
    :func:`folder_fingerprint`; for ``mnist`` and ``tfds:NAME`` whether TFDS had the set prepared on disk
    (``mnist`` falls back to the embedded digits when not). Binarization is applied when the copy is loaded."""
    spec = flags.dataset
    key = {"dataset": spec, "data_dir": flags.data_dir, "image_size": flags.image_size}
    if spec.startswith("folder:") and os.path.isdir(spec[len("folder:") :]):
        key.update(folder=folder_fingerprint(spec[len("folder:") :]), skip_unreadable=flags.skip_unreadable)
    elif spec == "mnist" or spec.startswith("tfds:"):
        key["tfds_prepared"] = tfds_prepared_on_disk(spec.split(":", 1)[-1], flags.data_dir or None)
    return key


def decode_once(flags: DataFlags, process_index: int = 0, wait_for_all: Callable[[], None] = lambda: None) -> Dataset:
    """The flags' dataset, decoded by process 0 alone into ``WORKDIR/.decoded-data.npz`` and memory-mapped
    by every process. A later run in the same workdir (a resume, or ``--overwrite``, which leaves hidden files)
    maps the file without decoding while the key matches. The workdir must be on a file system that every
    process sees, as Orbax's checkpoints already require. ``wait_for_all`` returns once every process has
    called it (the default: one process, no wait).

    Raises:
      ConfigError: the workdir cannot be written. DataError: the source cannot be read, or process 0's
        file cannot be read by this process.
    """
    path = os.path.join(flags.workdir, DECODED_DATA)
    if process_index == 0:
        key = decoded_data_key(flags)
        notes = read_npz_notes(path)
        if notes is None or notes.get("key") != key:
            _write_copy(flags, path, key)
    wait_for_all()
    notes = read_npz_notes(path)
    if notes is None or "source" not in notes:
        raise DataError(
            f"--distributed: process 0's decoded dataset {path} cannot be read by process {process_index}; "
            "the --workdir must be on a file system that every process sees"
        )
    return _map_decoded(flags, path, notes)


def decoded_copy(flags: DataFlags) -> Dataset | None:
    """The workdir's decoded copy of the flags' dataset (:func:`decode_once`), memory-mapped, when it
    matches :func:`decoded_data_key`; else None. ``experiments.evaluate`` reads a run's data through it."""
    path = os.path.join(flags.workdir, DECODED_DATA)
    notes = read_npz_notes(path)
    if notes is None or notes.get("key") != decoded_data_key(flags) or "source" not in notes:
        return None
    return _map_decoded(flags, path, notes)


def _write_copy(flags: DataFlags, path: str, key: dict) -> None:
    """Decodes the flags' dataset into ``path`` with ``key`` and the source in its notes (process 0)."""
    require_writable_dir(flags.workdir, "workdir")  # before anything is decoded
    started = time.perf_counter()
    try:
        if flags.dataset.startswith("folder:"):  # decoded a chunk at a time into the file
            source = flags.dataset
            notes = {"key": key, "source": source}
            save_image_folder_npz(
                source[len("folder:") :], path, flags.image_size, notes=notes, skip_unreadable=flags.skip_unreadable
            )
        else:
            dataset = load_dataset(
                flags.dataset, data_dir=flags.data_dir or None, batch_size=flags.batch_size, image_size=flags.image_size
            )
            source = dataset.source
            save_npz(dataset, path, notes={"key": key, "source": source})
    except OSError as err:
        raise ConfigError(
            f"--workdir {flags.workdir}: cannot write the decoded dataset {DECODED_DATA} "
            f"({err.strerror or type(err).__name__})"
        ) from None
    print(
        f"data: {source} decoded once into {path} ({os.path.getsize(path) / 2**20:.1f} MiB, "
        f"{time.perf_counter() - started:.1f} s); every process maps it",
        file=sys.stderr,
        flush=True,
    )


def _map_decoded(flags: DataFlags, path: str, notes: dict) -> Dataset:
    dataset = load_dataset("npz:" + path, binarize=flags.binarize, batch_size=flags.batch_size, memory_map=True)
    return dataclasses.replace(dataset, source=notes["source"], skipped=tuple(notes.get("skipped", ())))
