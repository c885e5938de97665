"""Process-level faults of a training run (used by :func:`vae_jax.runner.train`): a second process on the
workdir (:class:`WorkdirLock`), and SIGINT/SIGTERM (:class:`StopSignals`)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time

from vae_jax.errors import ConfigError, WorkdirBusy

LOCK_NAME = ".lock"


class WorkdirLock:
    """The exclusive lock ``WORKDIR/.lock`` of one training process (a context manager).

    An ``fcntl.flock`` lock, which the kernel releases however the process ends, so a killed run never
    blocks the next. The file holds the owner's pid, host and start time; it is removed on release. Entering
    raises :class:`WorkdirBusy` (naming the owner) or ConfigError (the workdir cannot be written).
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_NAME)
        self.record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        for _ in range(3):
            try:
                os.makedirs(self.workdir, exist_ok=True)
                f = open(self.path, "a+")  # noqa: SIM115 (kept open while the lock is held)
            except OSError as err:
                raise ConfigError(
                    f"--workdir {self.workdir}: not a writable directory ({err.strerror or type(err).__name__})"
                ) from None
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                owner = _json_or_empty(f.read())
                f.close()
                raise WorkdirBusy(
                    f"--workdir {self.workdir} is in use by pid {owner.get('pid')} on {owner.get('host')} "
                    f"(since {owner.get('started')}); wait for that run to end or use another --workdir"
                ) from None
            if _same_file(f, self.path):  # not a file a releasing owner removed meanwhile
                f.seek(0)
                f.truncate()
                json.dump(self.record, f)
                f.flush()
                self._file = f
                return
            f.close()
        raise WorkdirBusy(f"--workdir {self.workdir}: could not take its lock {self.path}; try again")

    def release(self) -> None:
        if self._file is not None:
            os.remove(self.path)  # while still locked, so no other process holds a lock on a removed file
            self._file.close()
            self._file = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _json_or_empty(text: str) -> dict:
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _same_file(f, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


class StopSignals:
    """Catches SIGINT and SIGTERM while training (a context manager); ``requested`` is the first signal, which
    the driver checks after each epoch. A second signal restores the previous handlers and re-delivers itself,
    which stops the process at once. Outside the main thread it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested is not None:
            self._restore()
            signal.raise_signal(signum)
            return
        self.requested = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after this epoch with a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


def skip_limit_message(state, max_consecutive_skips: int, seeds: list[int], epoch: int) -> str | None:
    """Why the run must stop, if a replica reached ``max_consecutive_skips`` skipped steps in a row; else None.

    ``state`` is the replicated train state after ``epoch``; ``opt_state.notfinite_count`` is
    ``optax.apply_if_finite``'s current run of skipped steps. A replica that hit the limit is frozen from then
    on, so its run began at step ``step - notfinite_count + 1`` (steps counted from 1).
    """
    if max_consecutive_skips <= 0:
        return None
    import numpy as np  # local: this module stays importable without the numeric stack

    from vae_jax import arrays  # the counters may be spread over several processes

    consecutive, steps = (np.asarray(a) for a in arrays.to_host((state.opt_state.notfinite_count, state.step)))
    stopped = np.nonzero(consecutive >= max_consecutive_skips)[0]
    if stopped.size == 0:
        return None
    r = int(stopped[0])
    first = int(steps[r] - consecutive[r] + 1)
    limit = first + max_consecutive_skips - 1
    return (
        f"{max_consecutive_skips} optimizer steps in a row had a non-finite loss or gradient and were skipped "
        f"(steps {first}-{limit}, seed {seeds[r]}, epoch {epoch}; --max-consecutive-skips "
        f"{max_consecutive_skips}); the run stopped at step {limit}"
    )
