"""Where a command's time goes: its phases, in seconds, from the start of the process.

A process starts in ``startup`` and :func:`enter` moves it to the next phase (``data``, ``training``, ...);
:func:`phase` counts work that interrupts the current phase (``evaluation``, ``figures``) under its own name.
Compilation (the durations JAX reports through :mod:`jax.monitoring`) is pulled out of every phase into
``compilation``, so the phases add up to the time since the process started. While threads compile beside
other work (``experiments.hvae`` evaluates its two models at once), every thread's compile seconds count as
``compilation``, up to the wall time that passed; the rest goes to the phase.

>>> import time
>>> from vae_jax import phases
>>> phases.enter("analyses"); time.sleep(0.01)
>>> seconds = phases.seconds()
>>> seconds["analyses"] >= 0.01 and abs(sum(seconds.values()) - phases.elapsed()) < 1e-6
True
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

import jax.monitoring

COMPILE_EVENTS = (  # the durations JAX reports for turning a traced function into an executable
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def _process_start() -> float:
    """The wall-clock time the process started (Linux: from /proc); elsewhere the time of this import."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


_START = _process_start()
_totals: dict[str, float] = {}
_stack: list[str] = ["startup"]
_since = time.time()  # when the phase on top of the stack last started counting
_compiling = {"seconds": 0.0, "since_mark": 0.0}
_entered: dict[str, float] = {}  # the process's age when it first entered each phase
_lock = threading.RLock()  # threads may compile, or read the phases, at once (experiments.hvae's evaluations)


def _on_duration(event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
        with _lock:
            _compiling["seconds"] += duration
            _compiling["since_mark"] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)
_totals["startup"] = _since - _START  # the interpreter and imports before this module loaded


def _close_segment() -> None:
    """Counts the time since the last mark under the phase on top, less the compilation in it."""
    global _since
    with _lock:
        now = time.time()
        # Programs compiled in several threads at once report more compile seconds than passed: at most the wall.
        compiled = min(_compiling["since_mark"], now - _since)
        _compiling["since_mark"] = 0.0
        name = _stack[-1]
        _totals[name] = _totals.get(name, 0.0) + now - _since - compiled
        _totals["compilation"] = _totals.get("compilation", 0.0) + compiled
        _since = now


def enter(name: str) -> None:
    """From now on the process is in phase ``name`` (the phases it passed keep their seconds)."""
    with _lock:
        _close_segment()
        _entered.setdefault(name, elapsed())
        _stack[0] = name
        del _stack[1:]


@contextlib.contextmanager
def phase(name: str):
    """Counts the time inside the ``with`` block under ``name``, then returns to the current phase."""
    with _lock:
        _close_segment()
        _stack.append(name)
    try:
        yield
    finally:
        with _lock:
            _close_segment()
            _stack.pop()


def elapsed() -> float:
    """Seconds since the process started, as of the last :func:`seconds` call."""
    with _lock:
        return sum(_totals.values())


def seconds() -> dict[str, float]:
    """The seconds of each phase so far (``compilation`` pulled out), adding up to the process's age."""
    with _lock:
        _close_segment()
        return {name: value for name, value in _totals.items() if value > 0.0 or name == "startup"}


def after_training() -> float | None:
    """Seconds since the process first entered ``analyses`` (the work after the last epoch, compilation
    included), or None before that."""
    return None if "analyses" not in _entered else elapsed() - _entered["analyses"]


def line() -> str:
    """``phases: startup 3.1 s, data 0.4 s, ... (total 12.0 s)``, with ``, after training 2.5 s`` in the
    parentheses once the analyses began."""
    parts = ", ".join(f"{name} {value:.1f} s" for name, value in seconds().items())
    after = after_training()
    return (
        f"phases: {parts} (total {elapsed():.1f} s" + ("" if after is None else f", after training {after:.1f} s") + ")"
    )


def report() -> None:
    """Prints :func:`line` on stderr."""
    print(line(), file=sys.stderr, flush=True)
