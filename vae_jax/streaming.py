"""Training on data bigger than device memory: batches streamed from host memory (or a memory-mapped file) by Grain.

The device-resident, scan-fused epoch (:mod:`vae_jax.parallel`) stays the
fast path; ``--stream`` (or a training split larger than half the device's
memory, where the device reports its memory) switches to
:func:`make_stream_epoch`, which keeps the arrays on the host and runs the
jitted train step once per batch.

It draws exactly what the resident epoch draws: the epoch's batches are
``train.epoch_batches(fold_in(data_key, epoch))`` and each step's key is
``fold_in(sample_key, step)``, so on data small enough for both the two paths
train the same model (tested; they differ only by the float rounding of a
fused scan body against separate step calls).

The loader is Grain (``grain.MapDataset``): a random-access source of batch
indices, a ``map`` that gathers the rows from the host arrays (NumPy arrays or
``np.load(..., mmap_mode="r")`` memory maps, so only the rows of the batch are
read from disk), a thread that prefetches batches on the host and a second
buffer of batches already transferred to the devices
(``grain.experimental.device_put``), each with the run's batch sharding. Grain
was picked over TFDS's ``data_source`` because it reads any random-access
source (our arrays, memory maps, ArrayRecord files) without TensorFlow, and is
JAX's own data loader (deterministic, checkpointable iterators, per-process
sharding for several hosts).

Limitation: streaming runs in one process (any number of its devices);
``--stream`` with ``--distributed`` is refused, as reading each process's
part of every batch is not implemented yet.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from vae_jax import parallel, train as train_lib

# Stream automatically when the training split needs more than this fraction of the device's memory.
AUTO_STREAM_FRACTION = 0.5


def should_stream(requested: bool, train_bytes: int, device=None) -> bool:
    """``--stream``, or the training split would take more than half of the device's memory (when it says)."""
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
    return np.asarray(jax.device_get(order)).transpose(1, 0, 2)


def batch_dataset(arrays: dict, batch_indices: np.ndarray, sharding=None, prefetch: int = 4):
    """A Grain dataset of the batches ``{name: [R, B, ...]}`` for ``batch_indices[num_batches, R, B]``, on the devices.

    Rows are gathered on a host thread ``prefetch`` batches ahead and moved to
    the devices (``sharding``, default the first device) two batches ahead.
    """
    import grain

    def gather(indices):  # [R, B] -> {name: [R, B, ...]}
        return {name: np.asarray(array[indices.reshape(-1)]).reshape(*indices.shape, *array.shape[1:])
                for name, array in arrays.items()}

    dataset = grain.MapDataset.source(batch_indices).map(gather).to_iter_dataset()
    return grain.experimental.device_put(dataset, sharding or jax.local_devices()[0], cpu_buffer_size=prefetch,
                                         device_buffer_size=2)


def make_stream_epoch(train_step: Callable, batch_size: int, plan: parallel.Plan, arrays: dict):
    """``epoch_fn(state[R], _, data_keys[R], sample_keys[R], epoch) -> (state[R], metrics[R])`` over host ``arrays``.

    The signature of :func:`vae_jax.parallel.make_epoch_program` (the second
    argument, the resident data, is ignored): ``runner.train`` calls either.
    ``arrays`` maps ``x`` (and ``y``) to host arrays with the examples on axis 0.
    """

    def one_step(state, batch, sample_key):
        return train_step(state, batch, jax.random.fold_in(sample_key, state.step))

    step = jax.jit(parallel.over_replicas(one_step, plan.seed_layout, (0, 0, 0), None), donate_argnums=0)
    sharding = plan.sharding(P(parallel.REPLICA_AXIS, parallel.DATA_AXIS))
    num_examples = len(next(iter(arrays.values())))

    def epoch_fn(state, unused_data, data_keys, sample_keys, epoch):
        del unused_data
        order = epoch_batch_indices(data_keys, int(epoch), num_examples, batch_size)
        all_metrics = []
        for batch in batch_dataset(arrays, order, sharding):
            state, metrics = step(state, batch, sample_keys)
            all_metrics.append(metrics)
        metrics = jax.tree_util.tree_map(lambda *m: jnp.mean(jnp.stack(m, axis=-1), axis=-1), *all_metrics)
        return state, metrics

    return epoch_fn
