"""Process-level faults of a training run: a second process on the workdir, SIGINT/SIGTERM.

:class:`WorkdirLock` makes a workdir belong to one training process at a
time. The lock is the file ``WORKDIR/.lock`` holding the owner's pid, host
and process start time; it is created atomically (written to a private file,
then hard-linked into place, which fails if a lock exists), so a lock file is
never seen half-written. A lock whose owner is gone (same host, and the pid is
dead or now names another process) is stale and is taken over; a live owner's
lock is refused with :class:`WorkdirBusy`.

:class:`StopSignals` turns the first SIGINT or SIGTERM into a request that the
driver honours at the end of the current epoch: it saves a checkpoint and
raises :class:`Interrupted`, whose exit code is the shell's ``128 + signum``
(130 for Ctrl-C, 143 for SIGTERM). A second signal stops at once.

Both are used by :func:`vae_jax.runner.train`, so every experiment gets them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time

from vae_jax.errors import ConfigError, PeerLost, ProcessStopped, RunStopped  # noqa: F401 (re-exported)

LOCK_NAME = ".lock"


class Interrupted(RunStopped):
    """A SIGINT/SIGTERM stopped the run after a checkpoint was saved."""

    def __init__(self, signum: int, epoch: int, workdir: str):
        self.signum = signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after epoch {epoch}; checkpoint {epoch} is saved in {workdir}; "
            "run the same command again to resume"
        )


class WorkdirBusy(ConfigError):
    """Another live process holds the workdir's lock."""


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), or None off Linux / if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its closing one.
    return stat[stat.rindex(")") + 2 :].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class WorkdirLock:
    """The exclusive lock ``WORKDIR/.lock`` of one training process (a context manager).

    Raises (on entering):
      WorkdirBusy: a live process (or one on another host, which cannot be
        checked) holds the lock; the message names its pid, host and start.
      ConfigError: the workdir cannot be created or written.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_NAME)
        self.record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "process_start": _process_start_time(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.held = False

    def _owner(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: not written by a live WorkdirLock (they write atomically)

    def _is_stale(self, owner: dict) -> bool:
        if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
            return True
        if owner.get("host") != self.record["host"]:
            return False  # another machine's process: cannot tell, so not stale
        if not _pid_alive(owner["pid"]):
            return True
        start = _process_start_time(owner["pid"])
        return start is not None and owner.get("process_start") not in (None, start)  # pid reused

    def acquire(self) -> None:
        try:
            os.makedirs(self.workdir, exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.record, f)
        except OSError as err:
            raise ConfigError(
                f"--workdir {self.workdir}: not a writable directory ({err.strerror or type(err).__name__})"
            ) from None
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic: fails if a lock exists
                    self.held = True
                    return
                except FileExistsError:
                    pass
                owner = self._owner()
                if owner is None:
                    continue  # released meanwhile
                if not self._is_stale(owner):
                    raise WorkdirBusy(
                        f"--workdir {self.workdir} is in use by pid {owner['pid']} on {owner.get('host')} "
                        f"(since {owner.get('started')}); wait for that run to end or use another --workdir "
                        f"(if that process is gone, delete {self.path})"
                    )
                print(
                    f"warning: taking over the stale lock {self.path} of pid {owner.get('pid')} "
                    f"on {owner.get('host')}, which is no longer running",
                    file=sys.stderr,
                )
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
            raise WorkdirBusy(f"--workdir {self.workdir}: could not take its lock {self.path}; try again")
        finally:
            os.remove(tmp)

    def release(self) -> None:
        if self.held and self._owner() == self.record:
            os.remove(self.path)
        self.held = False

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class StopSignals:
    """Catches SIGINT and SIGTERM while training (a context manager); ``requested`` is the first signal.

    The first signal only sets ``requested``: the driver checks it after each
    epoch, saves a checkpoint and raises :class:`Interrupted`. A second signal
    restores the previous handlers and re-delivers itself, which stops the
    process at once (KeyboardInterrupt for SIGINT, exit 143 for SIGTERM); the
    newest complete checkpoint is still on disk. Outside the main thread (where
    Python cannot install handlers) it does nothing.
    """

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
    """Why the run must stop, if a replica reached ``max_consecutive_skips`` skipped steps in a row.

    ``state`` is the replicated train state after ``epoch`` (host or device
    arrays with a leading ``[R]`` axis). A replica that hit the limit is frozen
    from then on (see :func:`vae_jax.train.make_train_step`), so its run of
    skips began at step ``step - consecutive_skips + 1`` and hit the limit at
    step ``step - consecutive_skips + max_consecutive_skips`` (steps counted
    from 1). Returns None when no replica reached it (or the guard is off).
    """
    if max_consecutive_skips <= 0:
        return None
    import numpy as np  # local: this module stays importable without the numeric stack

    from vae_jax import distributed  # the counters may be spread over several processes

    consecutive, steps = (np.asarray(a) for a in distributed.to_host((state.consecutive_skips, state.step)))
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
