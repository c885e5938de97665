"""Compiling: JAX's persistent compilation cache in the user's cache directory, and programs that run once.

* :func:`enable_compilation_cache`: compiled programs kept in ``user_cache_dir()/xla``, so a second run with the
  same shapes loads them (keys include the program, the JAX/XLA versions and the device). Best effort: an
  unwritable directory leaves the run uncached, never failed.
* :func:`jit_run_once`: programs that run once per process (the initial train state, figure queries) compiled
  with :func:`run_once_compiler_options`, several times faster on CPU.

A base module: it imports nothing from vae_jax, so the maths, the data layer and the driver can all use it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable


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
