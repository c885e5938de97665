"""Training on data bigger than device memory: batches streamed from host memory (or a memory-mapped file) by Grain.

``--stream`` (or a device's part of the training split larger than half its memory) switches from the
device-resident epoch (:mod:`vae_jax.parallel`) to :func:`make_stream_epoch`, which keeps the arrays on the
host and runs the jitted train step once per batch. It draws exactly what the resident epoch draws (batches
``train.epoch_batches(fold_in(data_key, epoch))``, step keys ``fold_in(sample_key, step)``), so both train the
same model up to float rounding (tested).

The loader is Grain (``grain.MapDataset``, JAX's own loader, which reads any random-access source without
TensorFlow): a prefetch thread gathers each batch's rows from NumPy arrays or memory maps. With several
processes every process computes the same global batch indices but gathers only the rows its own devices hold
under the batch's sharding, and the global batch is assembled with ``jax.make_array_from_single_device_arrays``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from vae_jax import arrays, parallel
from vae_jax import train as train_lib

# Stream automatically when the training split needs more than this fraction of the device's memory.
AUTO_STREAM_FRACTION = 0.5


def should_stream(requested: bool, train_bytes: int, device=None) -> bool:
    """``--stream``, or ``train_bytes`` (a device's part of the training split) would take more than half of
    the device's memory (when it says)."""
    if requested:
        return True
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # backends without memory statistics (CPU)
        stats = {}
    limit = stats.get("bytes_limit")
    return bool(limit) and train_bytes > AUTO_STREAM_FRACTION * limit


def epoch_batch_indices(data_keys: jax.Array, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
    """Host copy of every replica's batch indices ``[num_batches, R, batch_size]``, as the resident epoch draws them."""
    order = jax.vmap(lambda key: train_lib.epoch_batches(key, jnp.asarray(epoch), num_examples, batch_size))(data_keys)
    return np.asarray(arrays.to_host(order)).transpose(1, 0, 2)


def batch_dataset(
    arrays: dict, batch_indices: np.ndarray, sharding: jax.sharding.Sharding | None = None, prefetch: int = 4
):
    """The batches ``{name: [R, B, ...]}`` of ``batch_indices[num_batches, R, B]`` as global ``jax.Array``s: a
    Grain thread gathers, ``prefetch`` batches ahead, the rows of this process's shards under ``sharding``
    (default: the first local device)."""
    import grain

    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    replicas, batch = batch_indices.shape[1:]
    # (device, index: slices into the global batch) of each shard this process holds
    shards = {
        name: list(sharding.addressable_devices_indices_map((replicas, batch, *array.shape[1:])).items())
        for name, array in arrays.items()
    }

    def gather(indices):  # [R, B] -> {name: [rows of each local shard]}
        out = {}
        for name, array in arrays.items():
            read = {}  # devices that replicate one shard read its rows once

            def rows_of(index):
                key = tuple((sl.start, sl.stop) for sl in index[:2])
                if key not in read:
                    rows = indices[index[0], index[1]]  # [r, b] of this shard
                    read[key] = np.asarray(array[rows.reshape(-1)]).reshape(*rows.shape, *array.shape[1:])
                return read[key]

            out[name] = [rows_of(index) for _, index in shards[name]]
        return out

    def assemble(host_shards):
        return {
            name: jax.make_array_from_single_device_arrays(
                (replicas, batch, *arrays[name].shape[1:]),
                sharding,
                [jax.device_put(rows, device) for rows, (device, _) in zip(host_shards[name], shards[name])],
            )
            for name in arrays
        }

    read_options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
    host_batches = grain.MapDataset.source(batch_indices).map(gather).to_iter_dataset(read_options)
    return (assemble(host_shards) for host_shards in host_batches)


def make_stream_epoch(train_step: Callable, batch_size: int, plan: parallel.Plan, arrays: dict):
    """``epoch_fn(state[R], _, data_keys[R], sample_keys[R], epoch) -> (state[R], metrics[R])`` over host ``arrays``
    (``x`` and ``y``, examples on axis 0): the signature of :func:`vae_jax.parallel.make_epoch_program`, whose
    resident data (the second argument) is ignored."""

    def one_step(state, batch, sample_key):
        return train_step(state, batch, jax.random.fold_in(sample_key, state.step))

    step = jax.jit(parallel.over_replicas(one_step, plan.num_replicas, (0, 0, 0)), donate_argnums=0)
    sharding = plan.sharding(P(parallel.REPLICA_AXIS, parallel.DATA_AXIS))
    num_examples = len(next(iter(arrays.values())))

    def epoch_fn(state, unused_data, data_keys, sample_keys, epoch):
        del unused_data
        order = epoch_batch_indices(data_keys, int(epoch), num_examples, batch_size)  # every process: all of it
        all_metrics = []
        for batch in batch_dataset(arrays, order, sharding):
            state, metrics = step(state, batch, sample_keys)
            all_metrics.append(metrics)
        return state, train_lib.replicated_epoch_mean(all_metrics)  # as the resident epoch reduces them

    return epoch_fn
