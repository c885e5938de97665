"""Several processes (hosts) training one run: start-up, who writes, and bringing results to the host.

With ``--distributed`` (:func:`initialize`) every process sees all devices of all processes, the run's mesh
spans them and one jitted program runs on all of them. Each process places only its devices' rows of the
splits (or, streaming, reads only its part of each batch); ``npz:`` archives are memory-mapped and other
sources decoded once by process 0 (``runner.load_data``). Only process 0 writes the records, events and
figures; every process takes part in Orbax checkpointing. The coordinator comes from
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` when set, else JAX's own detection.

A signal to any process stops all after the same epoch (:func:`agreed_stop`); an error in one stops the
others at their next barrier (:func:`report_stop`, :func:`wait_for_all`); a process that dies without a word
is found by JAX's heartbeat (:func:`initialize`).
"""

from __future__ import annotations

import math
import os
import sys

import jax
import numpy as np

from vae_jax.errors import ConfigError, ProcessStopped


def initialize() -> None:
    """``jax.distributed.initialize`` from the environment; a no-op when already done. JAX's heartbeat
    (:func:`peer_timeout_s`) ends every other process, wherever it waits, once one has been silent that long."""
    if jax.distributed.is_initialized():
        return
    kwargs = {}
    if os.environ.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    timeout_s = peer_timeout_s()  # a bad value fails before any process waits for this one
    # CPU processes need a collectives library to talk to each other (GPUs and TPUs have their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=math.ceil(timeout_s))
    except (RuntimeError, ValueError) as err:  # JAX already running here, or no coordinator to be found
        raise ConfigError(
            f"--distributed: jax.distributed.initialize() failed ({first_line(err, 200)}); this "
            "experiment supports --distributed only when JAX has not run before training, with "
            "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set"
        ) from None


MIN_PEER_TIMEOUT_S = 2.0  # a shorter one could take a process between two of JAX's heartbeats for dead
# The default (JAX's is 100 s; a shorter one took busy processes for dead: docs/benchmarks.md);
# VAE_JAX_PEER_TIMEOUT_S sets another.
PEER_TIMEOUT_S = 60.0


def peer_timeout_s() -> float:
    """``VAE_JAX_PEER_TIMEOUT_S`` (seconds), else :data:`PEER_TIMEOUT_S`: JAX's heartbeat timeout, how long a
    silent process is waited for (rounded up to whole seconds); a ConfigError when it is not a finite number
    above 2 s."""
    text = os.environ.get("VAE_JAX_PEER_TIMEOUT_S", "").strip()
    if not text:
        return PEER_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > MIN_PEER_TIMEOUT_S or seconds == float("inf"):
        raise ConfigError(
            f"VAE_JAX_PEER_TIMEOUT_S must be a number of seconds above {MIN_PEER_TIMEOUT_S:g} (how long "
            f"a silent process is waited for), got {text!r}"
        )
    return seconds


def agreed_stop(requested: int | None) -> int | None:
    """The signal number of the lowest-numbered process that has one (``requested``: this process's
    :class:`vae_jax.faults.StopSignals`), else None: the same answer in every process (a ``process_allgather``).
    Call it once an epoch, in every process, so all stop after the same epoch with one checkpoint.

    ``multihost_utils.reached_preemption_sync_point`` would agree on the step too, but its SIGTERM handler is
    installed in C++ by ``jax.distributed.initialize`` for the process's whole life: a SIGTERM while the data
    loads or the figures are drawn would be swallowed, a second one could not stop at once, and it knows
    nothing of SIGINT (tests/test_distributed.py shows the swallowed SIGTERM).
    """
    if jax.process_count() == 1:
        return requested
    from jax.experimental import multihost_utils  # noqa: PLC0415 (only in runs of several processes)

    signals = np.asarray(multihost_utils.process_allgather(np.int32(requested or 0)))  # [processes]
    signalled = signals[signals != 0]
    return int(signalled[0]) if signalled.size else None


# -- an error in one process stops the others at their next barrier --------------------------------------
_BARRIERS = "vae_jax/barrier/"
_next_barrier = 0  # the index of the barrier this process reaches next (all pass the same ones in order)


def _client():
    """JAX's coordination-service client. JAX has no public handle for it; Orbax's public one is used."""
    from orbax.checkpoint import multihost  # noqa: PLC0415 (Orbax: only in runs of several processes)

    return multihost.get_jax_distributed_client()


def wait_for_all(name: str, timeout_s: int = 600) -> None:
    """Blocks until every process reaches the barrier ``name`` (a no-op in a single-process run); a process
    that stops with an error (:func:`report_stop`) ends it for the others at once.

    Written over the coordination service's key-value store (each process counts itself in, the last one
    writes the outcome, all wait for it) because JAX's barriers cannot be ended by a process that stops:
    ``multihost_utils.sync_global_devices`` is a collective (Gloo on CPUs gives up when the processes arrive
    more than 30 s apart), and the client's ``wait_at_barrier`` waits for a stopped process until its timeout
    (measured on loopback: both processes then aborted with a stack dump at JAX's shutdown barrier).

    Raises:
      ProcessStopped: another process reported that it stopped.
      TimeoutError: not every process arrived within ``timeout_s``.
    """
    global _next_barrier
    if jax.process_count() == 1:
        return
    client = _client()
    index = _next_barrier
    _next_barrier += 1
    prefix = f"{_BARRIERS}{index}/"
    if client.key_value_increment(prefix + "arrived", 1) == jax.process_count():
        _set_outcome(client, prefix, "passed")
    try:
        outcome = client.blocking_key_value_get(prefix + "outcome", timeout_s * 1000)
    except jax.errors.JaxRuntimeError:
        _next_barrier = index  # a process that gives up here stops the others waiting at it
        raise TimeoutError(f"--distributed: not every process reached {name!r} within {timeout_s} s") from None
    if outcome != "passed":
        raise ProcessStopped(f"--distributed: {outcome}; process {jax.process_index()} stops too")


def _set_outcome(client, prefix: str, outcome: str) -> None:
    try:
        client.key_value_set(prefix + "outcome", outcome)  # the first outcome stays
    except jax.errors.JaxRuntimeError:  # ALREADY_EXISTS
        pass


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of ``err``'s message (its type's name when it has none), at most ``limit`` characters."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]


def report_stop(err: BaseException) -> None:
    """Tells the other processes that this one stopped with ``err``: the barrier they wait at, or reach next
    (:func:`wait_for_all`), raises :class:`vae_jax.errors.ProcessStopped` naming it. A no-op in one process,
    without ``jax.distributed``, or when ``err`` is itself another process's stop."""
    if isinstance(err, ProcessStopped) or not jax.distributed.is_initialized() or jax.process_count() == 1:
        return
    try:
        outcome = f"process {jax.process_index()} stopped ({first_line(err)})"
        _set_outcome(_client(), f"{_BARRIERS}{_next_barrier}/", outcome)
    except Exception:  # the coordinator itself is gone: nothing to tell
        pass


def is_main_process() -> bool:
    """True in process 0, the one that writes logs and figures (and in a single-process run)."""
    return jax.process_index() == 0


def log(message: str) -> None:
    """A log line on stderr (stdout is kept for results); only process 0 of a ``--distributed`` run logs."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)
