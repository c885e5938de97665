"""Which checkpoint faults Orbax refuses on its own, and the one it restores silently (docs/reliability.md)."""

import glob
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vae_jax import checkpoint


def params(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {
        "enc": {"w": rng.normal(size=(64, 32)).astype(np.float32), "b": rng.normal(size=(32,)).astype(np.float32)},
        "dec": {"w": rng.normal(size=(32, 64)).astype(np.float32)},
    }


@pytest.fixture
def saved(tmp_path):
    """A workdir with checkpoints 1 and 2 of a small params tree, saved through :func:`checkpoint.save`."""
    manager = checkpoint.make_manager(str(tmp_path))
    for step in (1, 2):
        checkpoint.save(manager, step, params(step))
    checkpoint.close(manager)
    return tmp_path


def orbax_alone_into(workdir, step, template):
    """Checkpoint ``step`` as Orbax restores it by itself into ``template``: its own manager, no checks of ours."""
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    try:
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    finally:
        manager.close()


def orbax_alone(workdir, step):
    return orbax_alone_into(workdir, step, params(step))


def largest_array_data_file(step_dir) -> str:
    files = glob.glob(os.path.join(step_dir, checkpoint.ARRAY_DATA))
    assert files  # the layout the check relies on: the arrays' chunks live in OCDBT data files
    return max(files, key=os.path.getsize)


def same_leaves(a, b) -> bool:
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


def test_orbax_alone_restores_a_flipped_array_byte_as_other_values_and_restore_epoch_refuses_it(saved):
    assert same_leaves(orbax_alone(saved, 2), params(2))  # the undamaged checkpoint restores what was saved
    step_dir = saved / "checkpoints" / "2"
    data_file = largest_array_data_file(step_dir)
    blob = bytearray(open(data_file, "rb").read())
    blob[len(blob) // 2] ^= 0xFF  # one byte inside a zstd-compressed chunk
    open(data_file, "wb").write(bytes(blob))

    silently = orbax_alone(saved, 2)  # no error ...
    assert not same_leaves(silently, params(2))  # ... and values that were never saved
    manager = checkpoint.make_manager(str(saved))
    try:
        with pytest.raises(ValueError) as info:
            checkpoint.restore_epoch(manager, 2, params(2))
        message = checkpoint.one_line(info.value)
        assert os.path.relpath(data_file, step_dir) in message and "does not match its checksum" in message
        assert "\n" not in str(info.value)
        epoch, state = checkpoint.restore_latest(manager, params(2))  # falls back to the newest good one
        assert epoch == 1 and same_leaves(state, params(1))
    finally:
        checkpoint.close(manager)


def _truncate(step_dir):
    path = largest_array_data_file(step_dir)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garble_metadata(step_dir):
    (step_dir / "default" / "_METADATA").write_text('{"tree_met')


# After the failed read, TensorStore finishes its other reads on a thread whose event loop Orbax has closed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "fault",
    [
        _truncate,
        lambda step_dir: os.remove(largest_array_data_file(step_dir)),
        lambda step_dir: os.remove(step_dir / "default" / "manifest.ocdbt"),
        _garble_metadata,
    ],
    ids=["truncated_data", "deleted_data", "deleted_ocdbt_manifest", "garbled_metadata"],
)
def test_orbax_alone_refuses_the_faults_left_to_it(saved, fault):
    step_dir = saved / "checkpoints" / "2"
    os.remove(step_dir / checkpoint.CHECKSUMS)  # no check of ours anywhere: Orbax's own error
    fault(step_dir)
    with pytest.raises((ValueError, OSError)):  # TensorStore's errors are ValueErrors; a JSONDecodeError is one too
        orbax_alone(saved, 2)


def test_an_interrupted_save_is_not_a_step_and_the_next_save_replaces_it(saved):
    # Everything a save writes, still in the temporary directory Orbax renames to the step's name when it is done.
    os.rename(saved / "checkpoints" / "2", saved / "checkpoints" / "3.orbax-checkpoint-tmp")
    manager = checkpoint.make_manager(str(saved))
    try:
        assert manager.all_steps() == [1]
        epoch, state = checkpoint.restore_latest(manager, params(1))
        assert epoch == 1 and same_leaves(state, params(1))
        checkpoint.save(manager, 3, params(3))
    finally:
        checkpoint.close(manager)
    assert sorted(os.listdir(saved / "checkpoints")) == ["1", "3"]
    assert same_leaves(orbax_alone(saved, 3), params(3))


def test_orbax_alone_restores_the_saved_shapes_into_another_model_and_restore_epoch_refuses_them(saved):
    wider = {**params(2), "enc": {"w": np.zeros((64, 48), np.float32), "b": np.zeros((48,), np.float32)}}
    restored = orbax_alone_into(saved, 2, wider)  # no error: the shapes on disk, not the template's
    assert np.shape(restored["enc"]["w"]) == (64, 32)
    manager = checkpoint.make_manager(str(saved))
    try:
        with pytest.raises(ValueError, match=r"an array of shape \(32,\) where this model has \(48,\)"):
            checkpoint.restore_epoch(manager, 2, wider)
        with pytest.raises(ValueError, match="structure"):  # another tree: Orbax's own error
            checkpoint.restore_epoch(manager, 2, {"enc": params(2)["enc"]})
    finally:
        checkpoint.close(manager)


def test_faults_that_leave_the_values_intact_do_not_make_a_checkpoint_bad(saved):
    step_dir = saved / "checkpoints" / "2"
    blob = bytearray((step_dir / "_CHECKPOINT_METADATA").read_bytes())
    blob[10] ^= 0xFF  # its timestamps: Orbax does not read them to restore
    (step_dir / "_CHECKPOINT_METADATA").write_bytes(bytes(blob))
    (step_dir / "notes.txt").write_text("added by hand")
    # A checksum file as vae_jax wrote it before, listing every file: only the array data entries count.
    digests = json.loads((step_dir / checkpoint.CHECKSUMS).read_text())
    (step_dir / checkpoint.CHECKSUMS).write_text(json.dumps({**digests, "_CHECKPOINT_METADATA": "0" * 64}))
    assert same_leaves(orbax_alone(saved, 2), params(2))
    manager = checkpoint.make_manager(str(saved))
    try:
        assert same_leaves(checkpoint.restore_epoch(manager, 2, params(2)), params(2))
    finally:
        checkpoint.close(manager)
