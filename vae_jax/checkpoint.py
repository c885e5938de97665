"""Orbax checkpoints of the whole train state, one per saved epoch, and what survives a crash.

Orbax renames a checkpoint into place only once it is complete, and refuses damaged files and metadata on
restore; :func:`restore_epoch` adds the one check it lacks, of the array bytes (:func:`_verify_array_data`).
:func:`restore_latest` falls back to the newest checkpoint that restores, warning about each bad one, and can
move the bad ones to ``WORKDIR/bad_checkpoints/``. A failed save raises :class:`CheckpointError`; the previous
checkpoints are untouched (measurements: ``docs/reliability.md``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp

from vae_jax import distributed
from vae_jax.errors import CheckpointError

BAD_DIR = "bad_checkpoints"
# SHA-256 of a checkpoint's array data files, written beside them once Orbax has finished the save.
CHECKSUMS = "vae_jax_sha256.json"
# The OCDBT data files that hold the arrays' (zstd-compressed) chunks: TensorStore reads them without a checksum.
ARRAY_DATA = "*/ocdbt.process_*/d/*"


def make_manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
    """A manager over ``WORKDIR/checkpoints`` that keeps the newest ``keep`` checkpoints.

    Steps are epoch numbers: checkpoint ``e`` holds the state after ``e`` epochs.
    """
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(directory, options=options)


def close(manager: ocp.CheckpointManager) -> None:
    """Closes ``manager`` (joins its threads), quietly: every save waited for its write (:func:`save`), so the
    only errors left are those of a failed write, already reported."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            manager.close()
    except Exception:  # the failed save raised CheckpointError for it already
        pass


def save(manager: ocp.CheckpointManager, epoch: int, state) -> None:
    """Saves ``state`` as checkpoint ``epoch`` and waits until it is on disk; a failed save raises
    :class:`CheckpointError` naming the directory, the OS error and the newest earlier checkpoint (intact)."""
    previous = [s for s in manager.all_steps() if s < epoch]
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.CRITICAL)  # Orbax logs a failed write's traceback; ours is one line
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):  # a failed write also prints the traces of its pending writes
            manager.save(epoch, args=ocp.args.StandardSave(state), force=True)
            manager.wait_until_finished()
    except Exception as err:  # Orbax wraps the OS error (TensorStore reports it as a code in the message)
        level = logging.CRITICAL  # keep Orbax quiet about the writes it abandoned, here and later
        _quiet_aborted_writes()
        reason = _os_error_reason(err)
        kept = f"checkpoint {max(previous)} is intact" if previous else "no earlier checkpoint exists"
        causes = (
            "is the disk full or the directory read-only, or did another process of this --distributed run stop?"
            if jax.process_count() > 1
            else "is the disk full or the directory read-only?"
        )
        raise CheckpointError(
            f"could not save checkpoint {epoch} in {manager.directory} ({reason}; {causes}); {kept}"
        ) from None
    finally:
        absl_logger.setLevel(level)
    sys.stderr.write(captured.getvalue())  # a successful save's warnings, if any
    if distributed.is_main_process():  # one writer: processes sharing the folder would race on the rename
        _write_checksums(os.path.join(os.fspath(manager.directory), str(epoch)))
    distributed.wait_for_all(f"checksums_{epoch}")  # no process moves on (or restores) before the file is there


def _array_data_digests(step_dir: str) -> dict[str, str]:
    """``{relative path: sha256 hex}`` of every array data file (:data:`ARRAY_DATA`) of a checkpoint folder."""
    digests = {}
    for folder, _, names in os.walk(step_dir):
        for name in names:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, step_dir)
            if fnmatch.fnmatch(relative, ARRAY_DATA):
                with open(path, "rb") as f:
                    digests[relative] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests


def _write_checksums(step_dir: str) -> None:
    """Writes the checksum file of a finished checkpoint atomically (temporary file, then rename)."""
    if not os.path.isdir(step_dir):
        return
    path = os.path.join(step_dir, CHECKSUMS)
    with open(path + ".tmp", "w") as f:
        json.dump(_array_data_digests(step_dir), f, indent=0, sort_keys=True)
    os.replace(path + ".tmp", path)


def _verify_array_data(step_dir: str) -> None:
    """Raises ``ValueError`` naming the first array data file whose bytes changed since the save.

    The one fault Orbax 0.12 misses: a flipped byte inside an array's data file (an OCDBT data file of
    zstd-compressed zarr chunks, which carry no checksum) restores silently as different values. Missing
    files are left to Orbax; unlisted files, and a checkpoint without a checksum file, are not checked.
    """
    path = os.path.join(step_dir, CHECKSUMS)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        expected = json.load(f)
    actual = _array_data_digests(step_dir)
    for name in sorted(set(expected) & set(actual)):
        if expected[name] != actual[name]:
            raise ValueError(f"{name} does not match its checksum: its array data changed since the save")


def _quiet_aborted_writes() -> None:
    """After a failed save, drop the tracebacks of the writes Orbax abandoned.

    TensorStore completes (or fails) the other pending writes on its own threads after Orbax has closed their
    event loop; each then prints a traceback ("Event loop is closed", or the write error naming the temporary
    checkpoint directory) through ``sys.excepthook``, ``sys.unraisablehook`` or ``threading.excepthook``,
    burying the one-line error. Other exceptions are reported as before.
    """
    previous = sys.excepthook
    if getattr(previous, "_drops_aborted_writes", False):
        return

    def drops(exc) -> bool:
        text = str(exc)
        return text == "Event loop is closed" or ".orbax-checkpoint-tmp" in text

    def hook(exc_type, exc, tb):
        if not drops(exc):
            previous(exc_type, exc, tb)

    def dropping(previous_hook):  # for the hooks that take one ``args`` with ``exc_value``
        return lambda args: None if drops(args.exc_value) else previous_hook(args)

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # "Task exception was never retrieved"
    hook._drops_aborted_writes = True
    sys.excepthook = hook
    threading.excepthook = dropping(threading.excepthook)
    sys.unraisablehook = dropping(sys.unraisablehook)


def _os_error_reason(err: BaseException) -> str:
    """The OS error behind a failed save, e.g. ``No space left on device``, else the error's first line."""
    first, seen = err, set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.strerror:
            return err.strerror
        code = re.search(r"os_error_code='(\d+)'", str(err))
        if code:
            return os.strerror(int(code.group(1)))
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return one_line(first)


def one_line(err: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, without TensorStore's pointer to its full details."""
    text = (str(err).splitlines() or [""])[0].split(" See full TensorStore details")[0]
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def restore_epoch(manager: ocp.CheckpointManager, epoch: int, template, abstract=None):
    """The checkpoint of ``epoch`` read into the structure of ``template`` (arrays or ``jax.ShapeDtypeStruct``s;
    ``abstract``: the latter, when the caller has them), its array bytes checked first and its leaves' shapes
    after (Orbax checks the tree structure, not the shapes).

    Raises:
      CheckpointError: the checkpoint holds the train state's older layout (:func:`_refuse_older_layout`).
      Exception: whatever else stops it (a changed array file or shape, Orbax's or the file system's errors).
    """
    if abstract is None:
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    _verify_array_data(os.path.join(os.fspath(manager.directory), str(epoch)))
    _refuse_older_layout(manager, epoch)
    state = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
    # Orbax refuses another tree structure, but restores each array in its saved shape whatever the target's.
    for got, want in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(template)):
        if np.shape(got) != np.shape(want):
            raise ValueError(f"an array of shape {np.shape(got)} where this model has {np.shape(want)}")
    return state


# A top-level key of the train state as vae_jax wrote it before its optimizer state was wrapped in
# optax.apply_if_finite (which now counts the skipped steps that this counter and ``skipped_steps`` did).
OLDER_LAYOUT_KEY = "consecutive_skips"


def _refuse_older_layout(manager: ocp.CheckpointManager, epoch: int) -> None:
    """Raises :class:`CheckpointError` if checkpoint ``epoch`` holds the train state's older layout: not damaged
    (no warning, no quarantine), but the run must start afresh. Unreadable metadata is left to the restore."""
    item = manager.directory / str(epoch) / ocp.checkpoint_manager.DEFAULT_ITEM_NAME  # an etils Path
    try:  # the handler reads the tree's metadata quietly (the manager's item_metadata logs warnings)
        saved = ocp.StandardCheckpointHandler().metadata(item).tree
    except Exception:
        return
    if isinstance(saved, dict) and OLDER_LAYOUT_KEY in saved:
        workdir = os.path.dirname(os.fspath(manager.directory))
        raise CheckpointError(
            f"--workdir {workdir}: checkpoint {epoch} was written with an older optimizer-state layout "
            "(before non-finite steps were counted by optax.apply_if_finite) and cannot be resumed; "
            "retrain with --overwrite (the old run is moved aside) or use another --workdir"
        )


def restore_latest(manager: ocp.CheckpointManager, template, quarantine: bool = False):
    """Restores the newest checkpoint that can be read into the structure of ``template``.

    Checkpoints are tried newest first, each failure a one-line warning on stderr. With ``quarantine`` the bad
    ones are moved to ``WORKDIR/bad_checkpoints/STEP`` (kept, out of the way of the next saves). Returns
    ``(epoch, state)``, or ``(0, template)`` if there is no checkpoint.

    Raises:
      CheckpointError: none restores, or the newest undamaged one holds the older layout (nothing is moved).
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return 0, template
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    bad = []
    for epoch in steps:
        try:
            state = restore_epoch(manager, epoch, template, abstract)
        except CheckpointError:  # not damaged: older checkpoints of the run are no better
            raise
        except Exception as err:
            reason = one_line(err)
            print(
                f"warning: checkpoint {epoch} in {manager.directory} cannot be restored ({reason}); "
                "trying the next older one",
                file=sys.stderr,
            )
            bad.append(epoch)
            continue
        moved = _quarantine(manager, bad) if quarantine else ""
        if bad:
            print(
                f"warning: resuming from checkpoint {epoch}, the newest good one; "
                f"bad: {', '.join(map(str, bad))}{moved}",
                file=sys.stderr,
            )
        return epoch, state
    raise CheckpointError(
        f"no checkpoint in {manager.directory} can be restored (tried {', '.join(map(str, steps))}); they are "
        "damaged or belong to another model (or another version of vae_jax); use another --workdir, or add "
        "--overwrite to move this run aside and start afresh"
    )


def _quarantine(manager: ocp.CheckpointManager, bad_steps: list[int]) -> str:
    """Moves the bad checkpoints aside (process 0, once every process has read them); every process of a
    distributed run calls it, bad ones or not, and reloads the manager."""
    distributed.wait_for_all("checkpoints_read")
    if not bad_steps:
        return ""
    directory = os.fspath(manager.directory)
    target_root = os.path.join(os.path.dirname(directory), BAD_DIR)
    if distributed.is_main_process():  # processes sharing the folder would race on the moves
        os.makedirs(target_root, exist_ok=True)
        for step in bad_steps:
            target = os.path.join(target_root, str(step))
            if os.path.exists(target):
                shutil.rmtree(target)
            shutil.move(os.path.join(directory, str(step)), target)
    distributed.wait_for_all("checkpoints_quarantined")
    manager.reload()
    return f" (moved to {target_root})"
