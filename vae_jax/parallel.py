"""How a run's replicas (seeds) and its batch are laid out on devices, and the compiled programs that follow.

:func:`make_plan` turns ``--seeds`` and ``--devices`` into a :class:`Plan`; :func:`make_epoch_program` and
:func:`make_eval_program` build the jitted epoch and evaluation of ``R`` replicas for it (every state leaf,
key and result has a leading replica axis ``[R]``). One seed compiles the un-vmapped epoch (the axis of size 1
dropped and restored at trace time); several seeds, ``jax.vmap`` of it.

``--epoch-loop``: ``scan`` runs the epoch as one compiled ``lax.scan``; ``steps`` as a Python loop over the
jitted step (the same computation), because XLA:CPU runs a convolution's gradient several times slower inside
a compiled loop (docs/benchmarks.md); ``auto`` takes ``steps`` on CPU for a step with a convolution.

``--devices N|all``: a ``("replica", "data")`` mesh of shape ``(r, d)``, ``r = gcd(R, N)``, ``d = N / r``:
replicas split over ``replica``, each batch (and the splits' rows, :meth:`Plan.place_examples`) over
``data``; the global batch stays ``--batch-size``. The shardings are given to ``jax.jit`` and
``with_sharding_constraint``; the SPMD partitioner inserts the collectives.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae_jax import compiling, evaluate
from vae_jax import train as train_lib
from vae_jax.errors import ConfigError
from vae_jax.protocol import EPOCH_LOOPS

REPLICA_AXIS = "replica"
DATA_AXIS = "data"


def primitive_names(jaxpr) -> set[str]:
    """The names of the primitives a jaxpr (``jax.make_jaxpr(fn)(*args).jaxpr``) applies, those of its
    sub-jaxprs (the bodies of ``scan``, ``cond``, ``jit``, ...; found among each equation's parameters by their
    ``eqns``, so no JAX-internal type is needed) included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(item, "jaxpr", item)  # a closed jaxpr holds its jaxpr
                if hasattr(sub, "eqns"):
                    names |= primitive_names(sub)
    return names


def has_convolution(fn: Callable, *args) -> bool:
    """True when ``fn(*args)`` (traced, not run; ``args`` may be ``jax.ShapeDtypeStruct``) applies
    ``lax.conv_general_dilated`` anywhere, nested bodies included."""
    return "conv_general_dilated" in primitive_names(jax.make_jaxpr(fn)(*args).jaxpr)


def choose_epoch_loop(requested: str, platform: str, has_conv: Callable[[], bool]) -> str:
    """``scan`` or ``steps`` for ``--epoch-loop``: ``auto`` takes ``steps`` on CPU when ``has_conv()`` (asked only
    then) says the train step has a convolution (module docstring)."""
    if requested not in EPOCH_LOOPS:
        raise ConfigError(f"--epoch-loop must be one of {', '.join(EPOCH_LOOPS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "steps" if platform == "cpu" and has_conv() else "scan"


def eval_batch_sharding(devices: str) -> NamedSharding | None:
    """``--devices`` for an evaluation outside training (``experiments.evaluate``, the HVAE experiment's
    IWAE bound): None for one device, else each batch split along a 1-D ``data`` mesh of the first N devices
    (:func:`vae_jax.evaluate.evaluate_runs`'s ``batch_sharding``)."""
    count = parse_devices(devices)
    if count == 1:
        return None
    return NamedSharding(Mesh(np.asarray(jax.devices()[:count]), (DATA_AXIS,)), P(DATA_AXIS))


def parse_devices(spec: str, available: int | None = None) -> int:
    """``--devices``: ``all`` or a count N between 1 and the number of devices (of every process when distributed)."""
    available = jax.device_count() if available is None else available
    text = str(spec).strip().lower()
    if text == "all":
        return available
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= available:
        raise ConfigError(f"--devices must be 'all' or a count from 1 to {available} (the devices), got {spec!r}")
    return count


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where a run's replicas and batches live (see the module docstring).

    Attributes:
      num_replicas: R, the number of seeds trained together.
      mesh: a ``("replica", "data")`` mesh, or None on one device.
    """

    num_replicas: int
    mesh: Mesh | None = None

    @property
    def seed_layout(self) -> str:
        """``single`` (one seed, the un-vmapped program) or ``vmap`` (several seeds), as ``summary.json`` says."""
        return "single" if self.num_replicas == 1 else "vmap"

    @property
    def num_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.devices.size

    def sharding(self, spec: P) -> NamedSharding | None:
        return None if self.mesh is None else NamedSharding(self.mesh, spec)

    def place_replicated(self, tree):
        """Puts a pytree with a leading ``[R]`` axis on the mesh, split along ``replica`` (as is on one device)."""
        return _put(tree, self.sharding(P(REPLICA_AXIS)))

    @property
    def data_shards(self) -> int:
        """``d``, the size of the mesh's ``data`` axis (1 on one device)."""
        return 1 if self.mesh is None else int(self.mesh.shape[DATA_AXIS])

    def place_shared(self, tree):
        """Puts data every replica reads in full on every device of the mesh (as is on one device)."""
        return _put(tree, self.sharding(P()))

    def place_examples(self, arrays: dict) -> dict:
        """Puts a split ``{name: host array [N, ...]}`` on the devices, its rows split along ``data``.

        On a mesh each device holds ``ceil(N / d)`` rows, copied by its own process, zero-padded to a multiple
        of ``d``: give the epoch programs ``num_examples=N`` and drop the evaluation's results past row ``N``.
        On one device: the arrays as they are, on the device.
        """
        if self.mesh is None:
            return jax.tree_util.tree_map(jnp.asarray, arrays)
        sharding, shards = self.sharding(P(DATA_AXIS)), self.data_shards

        def put(host):
            n = host.shape[0]
            shape = (-(-n // shards) * shards, *host.shape[1:])

            def rows(index):  # index: the slices of one device's shard of the padded array
                start, stop, _ = index[0].indices(shape[0])
                block = np.zeros((stop - start, *shape[1:]), host.dtype)
                block[: max(0, min(stop, n) - start)] = host[start : min(stop, n)]
                return block

            return jax.make_array_from_callback(shape, sharding, rows)

        return jax.tree_util.tree_map(put, arrays)

    def summary(self) -> dict:
        """What ``summary.json`` records about the layout."""
        devices = [jax.devices()[0]] if self.mesh is None else list(self.mesh.devices.flat)
        return {
            "seed_layout": self.seed_layout,
            "device_count": self.num_devices,
            "mesh": None if self.mesh is None else dict(zip(self.mesh.axis_names, map(int, self.mesh.devices.shape))),
            "platform": devices[0].platform,
            "device_kind": devices[0].device_kind,
            "process_count": jax.process_count(),
        }


def _put(tree, sharding: NamedSharding | None):
    """``jax.device_put``; across processes, each process builds its shards from its own (identical) host copy.
    Without a sharding (one device), ``tree`` as it is."""
    if sharding is None:
        return tree
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(a):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(a)), impl=jax.random.key_impl(a))
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


def make_plan(num_replicas: int, batch_size: int, devices: str = "1") -> Plan:
    """The :class:`Plan` for R replicas on ``--devices`` devices (of every process when distributed); with N > 1
    the mesh is ``(r, d) = (gcd(R, N), N / gcd(R, N))`` and ``--batch-size`` must divide over the ``d`` shards."""
    count = parse_devices(devices)
    if count == 1:
        return Plan(num_replicas)
    replica_shards = math.gcd(num_replicas, count)
    data_shards = count // replica_shards
    if batch_size % data_shards:
        raise ConfigError(
            f"--batch-size {batch_size} cannot be split evenly over {data_shards} data shards "
            f"(--devices {devices} with {num_replicas} replica(s)); use a multiple of {data_shards} or fewer --devices"
        )
    grid = np.asarray(jax.devices()[:count]).reshape(replica_shards, data_shards)
    return Plan(num_replicas, Mesh(grid, (REPLICA_AXIS, DATA_AXIS)))


def over_replicas(fn: Callable, num_replicas: int, in_axes: tuple, spmd_axis_name: str | None = None) -> Callable:
    """``fn`` of one replica -> the same over a leading replica axis of the ``in_axes == 0`` arguments:
    ``jax.vmap`` (along the mesh axis ``spmd_axis_name``), or for one replica ``fn`` with the axis of size 1
    dropped on the way in and restored on the way out."""
    if num_replicas > 1:
        return jax.vmap(fn, in_axes=in_axes, spmd_axis_name=spmd_axis_name)

    def single(*args):
        args = [jax.tree_util.tree_map(lambda a: a[0], a) if ax == 0 else a for a, ax in zip(args, in_axes)]
        return jax.tree_util.tree_map(lambda a: a[None], fn(*args))

    return single


def make_epoch_program(
    train_step: Callable, batch_size: int, plan: Plan, epoch_loop: str = "scan", num_examples: int | None = None
):
    """The epoch of R replicas: ``(state[R], data, data_keys[R], sample_keys[R], epoch) -> (state[R], metrics[R])``.

    The state is donated. On a mesh each step's batch is split along ``data``, everything with a replica axis
    along ``replica``. ``num_examples``: the split's own row count when its rows were padded (default: all).
    """
    step = train_step
    if plan.mesh is not None:
        batch_sharding = plan.sharding(P(DATA_AXIS))

        def step(state, batch, key):
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            return train_step(state, batch, key)

    if epoch_loop == "steps":
        return _step_loop_epoch(step, batch_size, plan, num_examples)
    epoch_fn = train_lib.make_epoch_fn(step, batch_size, num_examples)
    program = over_replicas(epoch_fn, plan.num_replicas, (0, None, 0, 0, None), _spmd_axis(plan))
    per_replica, shared = plan.sharding(P(REPLICA_AXIS)), plan.sharding(P())  # None on one device: as given
    return jax.jit(
        program,
        donate_argnums=0,
        in_shardings=(per_replica, None, per_replica, per_replica, shared),
        out_shardings=(per_replica, per_replica),
    )


def _spmd_axis(plan: Plan) -> str | None:
    return None if plan.mesh is None else REPLICA_AXIS


def _step_loop_epoch(step: Callable, batch_size: int, plan: Plan, num_examples: int | None):
    """The epoch of :func:`vae_jax.train.make_epoch_fn` as a Python loop over one jitted step of R replicas."""

    def one_step(state, data, order, s, sample_key):  # order: [S, B] this replica's batches; s: the step's index
        idx = jax.lax.dynamic_index_in_dim(order, s, keepdims=False)
        batch = jax.tree_util.tree_map(lambda a: a[idx], data)
        return step(state, batch, jax.random.fold_in(sample_key, state.step))

    def batch_order(data_key, epoch, num_examples):  # [S, B], as the scan-fused epoch draws them
        return train_lib.epoch_batches(data_key, epoch, num_examples, batch_size)

    per_replica, shared = plan.sharding(P(REPLICA_AXIS)), plan.sharding(P())  # None on one device: as given
    step_program = jax.jit(
        over_replicas(one_step, plan.num_replicas, (0, None, 0, None, 0), _spmd_axis(plan)),
        donate_argnums=0,
        in_shardings=(per_replica, None, per_replica, shared, per_replica),
        out_shardings=(per_replica, per_replica),
    )
    order_program = compiling.jit_run_once(  # the shuffle: integer work, quick to run
        jax.vmap(batch_order, in_axes=(0, None, None)),
        static_argnums=2,
        in_shardings=(per_replica, shared),
        out_shardings=per_replica,
    )

    def epoch_fn(state, data, data_keys, sample_keys, epoch):
        count = num_examples or jax.tree_util.tree_leaves(data)[0].shape[0]
        order = order_program(data_keys, jnp.asarray(epoch, jnp.int32), count)  # [R, S, B]
        step_metrics = []
        for s in range(order.shape[1]):
            state, metrics = step_program(state, data, order, jnp.asarray(s, jnp.int32), sample_keys)
            step_metrics.append(metrics)
        return state, train_lib.replicated_epoch_mean(step_metrics)

    return epoch_fn


def make_eval_program(eval_fn: Callable, batch_size: int, plan: Plan):
    """The jitted per-example evaluation of R replicas: ``(params[R], data, key) -> dict of [R, N]``.

    The computation of :func:`vae_jax.evaluate.make_replicated_eval`, each batch split along ``data`` on a
    mesh; data placed by :meth:`Plan.place_examples` gives a result row for each padding row too.
    """
    run = evaluate.per_example_eval(eval_fn, batch_size, plan.sharding(P(DATA_AXIS)))
    program = over_replicas(run, plan.num_replicas, (0, None, None), _spmd_axis(plan))
    per_replica, shared = plan.sharding(P(REPLICA_AXIS)), plan.sharding(P())  # None on one device: as given
    return jax.jit(program, in_shardings=(per_replica, None, shared), out_shardings=per_replica)
