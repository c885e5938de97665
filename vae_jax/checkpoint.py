"""Orbax checkpoints of the whole train state, one per saved epoch.

Orbax writes each checkpoint into a temporary directory and renames it only
when it is complete, so a crash or a diverged run never leaves a half-written
checkpoint in place of the last good one.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used, with a one-line reason."""


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


def save(manager: ocp.CheckpointManager, epoch: int, state) -> None:
    manager.save(epoch, args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, template):
    """Restores the newest checkpoint into the structure of ``template``.

    Returns:
      ``(epoch, state)``, or ``(0, template)`` if there is no checkpoint.
    """
    epoch = manager.latest_step()
    if epoch is None:
        return 0, template
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    try:
        state = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {epoch} in {manager.directory} does not match this model and config "
            f"({type(err).__name__}); use another --workdir or --no-resume"
        ) from None
    return epoch, state
