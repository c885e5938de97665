"""The errors a user can cause, and the config-field helpers that raise them: the bottom layer of vae_jax.

It imports nothing from vae_jax, JAX or argparse, so every layer may raise these errors; :mod:`vae_jax.cli`
turns them into one-line ``error: ...`` messages with exit code 2 (a :class:`RunStopped`: its own code).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import tempfile


class ConfigError(ValueError):
    """An invalid config value; the message names the flag."""


class RunStopped(RuntimeError):
    """A run that stopped before its last epoch, with the exit code a command should return."""

    exit_code = 1


class ProcessStopped(RunStopped):
    """Another process of a distributed run stopped with an error: this one stops too (see
    :func:`vae_jax.distributed.wait_for_all`)."""


class PeerLost(RunStopped):
    """JAX failed inside a distributed run, most often a collective whose peer process died.

    The process stops at once with one line (:func:`vae_jax.cli.user_errors` exits with ``os._exit``), without
    JAX's shutdown barrier, which would wait for the lost process until its heartbeat timeout and then abort
    with a stack dump (measured: docs/benchmarks.md).
    """

    exit_immediately = True


class DataError(ValueError):
    """A dataset spec, file or array that cannot be used, with a one-line reason."""


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used, with a one-line reason."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message says which checkpoint, if any, is on disk."""


class WorkdirBusy(ConfigError):
    """Another live process holds the workdir's lock."""


class Interrupted(RunStopped):
    """A SIGINT/SIGTERM stopped the run after a checkpoint was saved; the exit code is 128 + the signal's."""

    def __init__(self, signum: int, epoch: int, workdir: str):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after epoch {epoch}; checkpoint {epoch} is saved in "
            f"{workdir}; run the same command again to resume"
        )


# What a command's ``main`` turns into one ``error: ...`` line and exit code 2 (:func:`vae_jax.cli.user_errors`).
USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingDiverged)


def flag(name: str) -> str:
    """The command-line flag of a config field: ``latent_dim`` -> ``--latent-dim``."""
    return "--" + name.replace("_", "-")


def field(default, help: str, choices: tuple | None = None):
    """A config field with its help text (and allowed values)."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if isinstance(default, (list, dict, set)):
        raise TypeError("config defaults must be immutable")
    return dataclasses.field(default=default, metadata=metadata)


def require(condition: bool, name: str, expected: str, value) -> None:
    """Raises :class:`ConfigError` naming the flag unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{flag(name)} must be {expected}, got {value!r}")


def positive_number(value, name: str, note: str = "") -> float:
    """``value`` as a float if it is a finite positive number, else a :class:`ConfigError` naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{name} must be a positive number{note}, got {value!r}")
    return number


def require_list(name: str, values, ok, expected: str, shown=None) -> None:
    """:func:`require` for a comma-separated flag: one or more ``values``, ``ok(value)`` true for each; the
    error shows them comma-joined, or ``shown``."""
    require(
        len(values) > 0 and all(ok(v) for v in values),
        name,
        expected,
        ",".join(map(str, values)) if shown is None else shown,
    )


def require_writable_dir(path: str, name: str = "workdir") -> None:
    """Creates the directory ``path`` if needed and checks that a file can be written in it (a probe file named
    for this process alone); else a :class:`ConfigError` naming the flag of ``name``."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test."):
            pass
    except OSError as err:
        raise ConfigError(
            f"{flag(name)} {path}: not a writable directory ({err.strerror or type(err).__name__})"
        ) from None
