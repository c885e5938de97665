"""Several processes (hosts) training one run: start-up, who writes, and bringing results to the host.

``--distributed`` calls :func:`initialize` first thing in ``runner.train``.
Every process then sees all devices of all processes (``jax.devices()``),
the run's mesh (:mod:`vae_jax.parallel`) spans them, and one jitted program
runs on all of them: the batch of each step is split over every device of
every process and XLA's collectives (NCCL on GPUs, ICI on TPUs, Gloo on CPUs)
reduce the gradients. Each process copies to its own devices only their rows of
the training and test splits (the rows are split along the mesh's ``data``
axis, :meth:`vae_jax.parallel.Plan.place_examples`); with ``--stream`` it reads
from its host arrays only its devices' part of each batch
(:mod:`vae_jax.streaming`). An uncompressed ``npz:`` archive is memory-mapped
(``runner.load_data``), so a process reads from the file only those rows; any
other source is decoded once, by process 0, into the workdir and mapped the same
way (``runner.decode_once``). Only process 0 writes
``config.json``, ``metrics.jsonl``, ``summary.json``, TensorBoard events and
figures; every process takes part in Orbax checkpointing, which writes each
array shard once.

The coordinator comes from the usual environment: ``JAX_COORDINATOR_ADDRESS``
(``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
when set, otherwise JAX's own detection (Slurm, Open MPI, Cloud TPU, ...).
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable

import jax

from vae_jax.arrays import to_host  # noqa: F401 (re-exported: the driver's name for it)
from vae_jax.errors import ConfigError, ProcessStopped


def initialize() -> None:
    """``jax.distributed.initialize`` from the environment (see the module docstring); a no-op when already done."""
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
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as err:  # JAX already running here, or no coordinator to be found
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"--distributed: jax.distributed.initialize() failed ({first_line[:200]}); this "
            "experiment supports --distributed only when JAX has not run before training, with "
            "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set"
        ) from None
    if jax.process_count() > 1:
        _start_peer_watch(timeout_s)


# -- peers that die ------------------------------------------------------------------------------
# A process killed outright (SIGKILL, out of memory, its host lost) tells no one. A collective with it fails at
# once (vae_jax.faults.PeerLost), but a process waiting for it at a barrier (Orbax's checkpoint barriers,
# wait_for_all, JAX's shutdown barrier at exit) learns of it only from the coordination service's heartbeat
# timeout (100 s), after which JAX aborts it with a stack dump. So every process beats a counter in the
# coordination service's key-value store once a second, and process 0 watches the counters (one read a second;
# the others read one key, so the store's load grows with the number of processes, not its square). When one
# stands still for PEER_TIMEOUT_S, process 0 names it under LOST and every process prints one line and exits
# (os._exit: JAX's shutdown barrier would wait for the dead process); process 0 exits last, as the others need
# the coordinator (it runs in process 0) to read that key. When process 0 itself dies, JAX ends the others
# within a second. A process that ends marks itself done (atexit) and stops beating, so one that finishes early
# is not taken for dead; the watch goes on until the process exits.

_ALIVE = "vae_jax/alive/"
_LOST = "vae_jax/lost"
_DONE = "done"
HEARTBEAT_S = 1.0
PEER_TIMEOUT_S = 20.0  # the default; VAE_JAX_PEER_TIMEOUT_S sets another
_DEFAULT_HINT = "start every process again to resume from the last checkpoint"
_peer_lost_hint: Callable[[], str] = lambda: _DEFAULT_HINT  # noqa: E731
_done = threading.Event()
_beat_lock = threading.Lock()  # no beat may overwrite the done mark


def set_peer_lost_hint(hint: Callable[[], str]) -> None:
    """What the line printed when a peer is lost says after naming it (``runner.train``: the checkpoint kept)."""
    global _peer_lost_hint
    _peer_lost_hint = hint


def peer_timeout_s() -> float:
    """``VAE_JAX_PEER_TIMEOUT_S`` (seconds), else :data:`PEER_TIMEOUT_S`; a ConfigError when it is not a finite
    number above two heartbeats (2 s)."""
    text = os.environ.get("VAE_JAX_PEER_TIMEOUT_S", "").strip()
    if not text:
        return PEER_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 2 * HEARTBEAT_S or seconds == float("inf"):
        raise ConfigError(
            f"VAE_JAX_PEER_TIMEOUT_S must be a number of seconds above {2 * HEARTBEAT_S:g} (how long "
            f"a silent process is waited for), got {text!r}"
        )
    return seconds


def _start_peer_watch(timeout_s: float) -> None:
    client, me, count = _client(), jax.process_index(), jax.process_count()
    atexit.register(_mark_done, client, me)
    threading.Thread(
        target=_watch_peers, args=(client, me, count, timeout_s), name="vae_jax-peer-watch", daemon=True
    ).start()


def _mark_done(client, me: int) -> None:
    with _beat_lock:
        _done.set()
        try:
            client.key_value_set(_ALIVE + str(me), _DONE, allow_overwrite=True)
        except Exception:  # the coordinator is gone: nothing to tell
            pass


def _watch_peers(client, me: int, count: int, timeout_s: float, stop: Callable[[int], None] = os._exit) -> None:
    """The peer watch's thread (see above): beats; process 0 finds a silent process, and every process stops
    (``stop(1)``) once one is named under ``LOST``."""
    started = time.monotonic()
    changed = {peer: ("", started) for peer in range(1, count)} if me == 0 else {}  # last beat, when it changed
    beat = 0
    while True:
        try:
            with _beat_lock:
                if not _done.is_set():
                    beat += 1
                    client.key_value_set(_ALIVE + str(me), str(beat), allow_overwrite=True)
            if me == 0:
                lost = _silent_peer(dict(client.key_value_dir_get(_ALIVE)), changed, timeout_s)
                if lost is not None:
                    client.key_value_set(_LOST, str(lost), allow_overwrite=True)
            else:
                lost = client.key_value_try_get(_LOST)
        except Exception:  # no such key yet (try_get), or the coordinator is gone (JAX itself ends this process)
            lost = None
            if me == 0:
                return
        if lost is not None:
            try:
                hint = _peer_lost_hint()
            except Exception:
                hint = _DEFAULT_HINT
            print(
                f"error: --distributed: process {lost} stopped answering (no heartbeat for {timeout_s:g} s: "
                f"killed, out of memory, or its host lost); process {me} stops: {hint}",
                file=sys.stderr,
                flush=True,
            )
            if me == 0:  # the others read the key from the coordinator, which ends with this process
                time.sleep(2 * HEARTBEAT_S)
            stop(1)
            return
        time.sleep(HEARTBEAT_S)


def _silent_peer(beats: dict[str, str], changed: dict[int, tuple[str, float]], timeout_s: float) -> int | None:
    """Process 0's look at the beats: updates ``changed`` (peer -> last beat seen, and when it changed; peers
    that are done leave it) and returns a peer silent for ``timeout_s``, or None."""
    now = time.monotonic()
    for peer in list(changed):
        value = beats.get(_ALIVE + str(peer), "")
        if value == _DONE:
            del changed[peer]
        elif value != changed[peer][0]:
            changed[peer] = (value, now)
    silent = sorted(peer for peer, (_, since) in changed.items() if now - since > timeout_s)
    return silent[0] if silent else None


_BARRIERS = itertools.count()  # every process passes the same barriers in the same order
_STOPPED = "vae_jax/stopped/"  # key prefix: a process that stopped with an error says so under it


def _client():
    from jax._src import distributed as jax_distributed  # the coordination client has no public handle

    return jax_distributed.global_state.client


def wait_for_all(name: str, timeout_s: int = 600, poll_s: float = 0.05) -> None:
    """Blocks until every process reaches the barrier ``name`` (a no-op in a single-process run).

    The barrier goes through the coordination service's key-value store, not a
    collective: the first collective sets up the CPU collectives (Gloo), which
    gives up when the processes arrive more than 30 s apart (as after loading
    data at different speeds). Each process writes its arrival and polls for
    the others'; it also polls for a process that stopped with an error
    (:func:`report_stop`) and then raises
    :class:`vae_jax.faults.ProcessStopped` naming it and its error, so that one
    process's bad flag or unwritable workdir stops every process at once
    instead of leaving the others waiting out the timeout.

    Raises:
      ProcessStopped: another process reported that it stopped.
      TimeoutError: not every process arrived within ``timeout_s``.
    """
    if jax.process_count() == 1:
        return
    client = _client()
    prefix = f"vae_jax/barrier/{next(_BARRIERS)}_{name}/"
    client.key_value_set(prefix + str(jax.process_index()), "arrived")
    deadline = time.monotonic() + timeout_s
    while True:
        stopped = sorted(client.key_value_dir_get(_STOPPED))
        if stopped:
            key, message = stopped[0]
            raise ProcessStopped(
                f"--distributed: process {key.rsplit('/', 1)[-1]} stopped ({message}); "
                f"process {jax.process_index()} stops too"
            )
        if len(client.key_value_dir_get(prefix)) >= jax.process_count():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"--distributed: not every process reached {name!r} within {timeout_s} s")
        time.sleep(poll_s)


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of ``err``'s message (its type's name when it has none), at most ``limit`` characters."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]


def report_stop(err: BaseException) -> None:
    """Tells the other processes that this one stopped with ``err`` (their :func:`wait_for_all` raises).

    Nothing happens in a single-process run, when ``jax.distributed`` is not
    running, or when ``err`` is itself another process's stop.
    """
    if isinstance(err, ProcessStopped) or not jax.distributed.is_initialized() or jax.process_count() == 1:
        return
    try:
        _client().key_value_set(_STOPPED + str(jax.process_index()), first_line(err))
    except Exception:  # the coordinator itself is gone: nothing to tell
        pass


def is_main_process() -> bool:
    """True in process 0, the one that writes logs and figures (and in a single-process run)."""
    return jax.process_index() == 0


def log(message: str) -> None:
    """A log line on stderr (stdout is kept for results); only process 0 of a ``--distributed`` run logs."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)
