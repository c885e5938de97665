"""Decode once for several hosts (:mod:`vae_jax.data.decoded`) without the training driver: the processes'
barrier passed in as a callable, the processes played one after another in this test process."""

import os
import types

import numpy as np
import pytest

from vae_jax import data


def _flags(workdir, **kw):
    """The data flags decode_once reads, as a plain object (no TrainConfig: the data package needs none)."""
    defaults = dict(dataset="mnist:embedded", data_dir="", image_size=0, skip_unreadable=False, binarize="none")
    return types.SimpleNamespace(**{**defaults, "batch_size": 32, "workdir": str(workdir), **kw})


def test_process_zero_decodes_before_the_barrier_and_the_others_only_map_its_copy(tmp_path):
    copy = tmp_path / "run" / data.DECODED_DATA
    barrier = []  # for each call of the barrier: whether process 0's copy existed then

    def wait_for_all():
        barrier.append(copy.exists())

    # A process other than 0 never decodes: before process 0 has written the copy it finds nothing to map.
    with pytest.raises(data.DataError, match=r"^--distributed: .* cannot be read by process 1; the --workdir"):
        data.decode_once(_flags(tmp_path / "run"), process_index=1, wait_for_all=wait_for_all)
    assert barrier == [False] and not copy.exists()

    first = data.decode_once(_flags(tmp_path / "run"), process_index=0, wait_for_all=wait_for_all)
    assert barrier == [False, True]  # written before process 0 reached the barrier
    written = os.stat(copy).st_mtime_ns

    other = data.decode_once(_flags(tmp_path / "run", binarize="dynamic"), process_index=1, wait_for_all=wait_for_all)
    assert barrier == [False, True, True] and os.stat(copy).st_mtime_ns == written  # process 1 wrote nothing
    direct = data.load_dataset("mnist:embedded", binarize="dynamic")
    assert first.memory_mapped and other.memory_mapped and other.source == direct.source
    for name in ("train_pixels", "y_train", "test_pixels", "y_test"):  # the same arrays as the source itself
        np.testing.assert_array_equal(getattr(other, name), getattr(direct, name))
    np.testing.assert_array_equal(first.train_pixels, data.load_dataset("mnist:embedded").train_pixels)
