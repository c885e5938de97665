"""Train state, the jitted train step, and the scan-fused epoch.

Every key of a run derives from one root key per seed (:func:`run_keys`): the epoch's data order from
``fold_in(data_key, epoch)``, each step's key from ``fold_in(sample_key, state.step)``, so a restored run
draws exactly the randomness it would have drawn without the interruption. :func:`make_epoch_fn` (one
compiled ``lax.scan`` over the epoch) and :func:`loop_epoch` (a Python loop over the jitted step) compute
the same epoch; :func:`make_replicated_epoch_fn` vmaps the fused one over replicas (seeds). Non-finite
steps are counted, and can be skipped, by the optimizer wrapper :func:`skip_non_finite`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from vae_jax import compiling
from vae_jax.arrays import batch_to_float
from vae_jax.errors import ConfigError


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree.

    ``opt_state`` is :func:`skip_non_finite`'s :class:`optax.ApplyIfFiniteState`: the optimizer's own state
    (``inner_state``) and the counts of non-finite steps (``total_notfinite``, ``notfinite_count``).
    """

    step: jax.Array  # int32 []: optimizer steps taken
    params: Any
    opt_state: Any
    # a task's update_fn's non-gradient state (a VQ-VAE's EMA codebook statistics); {} for most tasks
    model_state: Any = flax.struct.field(default_factory=dict)


class RunKeys(NamedTuple):
    """The three independent key streams of one run (one seed)."""

    init: jax.Array  # parameter initialisation
    data: jax.Array  # epoch permutations: fold_in(data, epoch)
    sample: jax.Array  # per-step randomness: fold_in(sample, step)


def run_keys(seed: int | jax.Array) -> RunKeys:
    """Splits the root key of ``seed`` into the run's key streams."""
    init_key, data_key, sample_key = jax.random.split(jax.random.key(seed), 3)
    return RunKeys(init_key, data_key, sample_key)


_replica_keys = compiling.jit_run_once(jax.vmap(run_keys))


def replica_keys(seeds) -> RunKeys:
    """:func:`run_keys` of each seed, stacked along a leading replica axis ``[R]`` (one small compiled program)."""
    return _replica_keys(jnp.asarray(seeds))


def init_train_state(params, optimizer: optax.GradientTransformation, model_state: Any = None) -> TrainState:
    """The state before the first step; ``optimizer`` is the plain one (its state is wrapped as
    :func:`skip_non_finite`'s, whatever ``max_consecutive_skips`` the step is built with)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=skip_non_finite(optimizer).init(params),
        model_state={} if model_state is None else model_state,
    )


def learning_rate_schedule(config, total_steps: int | None = None):
    """The learning rate of ``config`` (a :class:`vae_jax.protocol.TrainConfig`) by optimizer step.

    ``constant``: the float ``--learning-rate`` itself; ``cosine``: ``lr * (1 + cos(pi t / T)) / 2`` for
    ``t < T``, then 0; ``warmup_cosine``: ``lr * t / W`` for ``t < W``, then the cosine decay over the remaining
    ``T - W`` steps. ``T`` is ``--decay-steps``, else ``total_steps`` (None for a state template).
    """
    if config.lr_schedule == "constant":
        return config.learning_rate
    decay_steps = config.decay_steps or total_steps or config.warmup_steps + 1
    if decay_steps <= config.warmup_steps:
        raise ConfigError(
            f"--warmup-steps {config.warmup_steps} must be fewer than the {decay_steps} steps the "
            "schedule decays over (--decay-steps, else --epochs times the steps per epoch)"
        )
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, decay_steps)
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps, decay_steps)


def make_optimizer(config, total_steps: int | None = None) -> optax.GradientTransformation:
    """The optimizer ``config``'s flags describe: Adam (``--weight-decay`` > 0: AdamW) at
    :func:`learning_rate_schedule`, after clipping the gradients to the global norm ``--grad-clip`` if > 0
    (the defaults give exactly ``optax.adam(config.learning_rate)``)."""
    learning_rate = learning_rate_schedule(config, total_steps)
    decay = config.weight_decay
    optimizer = optax.adamw(learning_rate, weight_decay=decay) if decay > 0 else optax.adam(learning_rate)
    if config.grad_clip > 0:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip), optimizer)
    return optimizer


def skip_non_finite(optimizer: optax.GradientTransformation, max_consecutive_skips: int = 0):
    """``optimizer`` made to skip non-finite updates, with the state of :func:`optax.apply_if_finite`.

    The state is exactly ``optax.apply_if_finite``'s ``ApplyIfFiniteState``, its fields meaning the same
    (``notfinite_count``: the current unbroken run, ``total_notfinite``: all, ``last_finite``). An update is
    non-finite if a gradient holds a NaN or infinity, or if the caller passes ``usable=False`` (a scalar bool).
    With ``max_consecutive_skips > 0`` a non-finite update is zero and keeps the inner state (``lax.cond``) but
    is never given up on (the driver stops the run); with 0 every update is applied and counted. The layout is
    the same either way, so a run may resume with another ``--max-consecutive-skips``.

    Why not ``optax.apply_if_finite`` itself: it decides from the gradients alone, so a non-finite loss or a
    frozen state had to be written into every gradient as a NaN (one more pass over all of them each step),
    and it runs the update under ``lax.cond`` even when every update is applied (``max_consecutive_errors=0``),
    which costs the scan-fused epoch another pass. A ``jnp.where`` per leaf instead of the ``lax.cond``
    costs more still on CPU, where XLA does not fuse the selects into Adam's update. docs/benchmarks.md
    has the measurements.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`; its ``update`` takes the extra keyword ``usable``.
    """
    guarded = max_consecutive_skips > 0
    inner = optax.with_extra_args_support(optimizer)

    def update(updates, state, params=None, *, usable=True, **extra_args):
        leaves = jax.tree_util.tree_leaves(updates)
        finite = jnp.logical_and(usable, jnp.all(jnp.array([jnp.all(jnp.isfinite(u)) for u in leaves])))

        def apply(_):
            return inner.update(updates, state.inner_state, params, **extra_args)

        def skip(_):
            return optax.tree.zeros_like(updates), state.inner_state

        new_updates, inner_state = jax.lax.cond(finite, apply, skip, None) if guarded else apply(None)
        return new_updates, optax.ApplyIfFiniteState(
            notfinite_count=jnp.where(finite, jnp.zeros([], jnp.int32), optax.safe_increment(state.notfinite_count)),
            last_finite=finite,
            total_notfinite=jnp.where(finite, state.total_notfinite, optax.safe_increment(state.total_notfinite)),
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(optax.apply_if_finite(optimizer, 0).init, update)


def make_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    update_fn: Callable | None = None,
    max_consecutive_skips: int = 0,
):
    """Returns the jitted ``train_step(state, batch, key) -> (state, metrics)``, the state donated.

    ``loss_fn(params, batch, key, step) -> (loss, metrics)`` is differentiated with respect to params;
    ``step`` (int32 ``[]``, steps taken so far) drives schedules such as a KL warm-up. The batch is converted
    to float32 in [0, 1] first (``batch["x"]`` may be ``uint8``). With ``update_fn`` the loss returns
    ``(loss, (metrics, aux))`` and, after the optimizer's update, ``update_fn(params, model_state, aux, step,
    key) -> (params, model_state, metrics)`` (own key, split from ``key``) makes the non-gradient updates (a
    VQ-VAE's EMA codebook, dead-code restarts); its metrics are merged into the step's.

    ``optimizer`` is the plain one, run as :func:`skip_non_finite` wraps it. With ``max_consecutive_skips > 0``
    a step whose loss or gradients are not finite keeps the params, inner optimizer state and model state; the
    step counter still advances. Once ``max_consecutive_skips`` steps in a row were skipped the state is frozen
    (every later step is skipped too), so the driver can stop the run at the end of the epoch; the limit was
    reached at step ``step - notfinite_count + max_consecutive_skips``. The metrics get ``skipped`` (1.0 for a
    skipped step), which :func:`epoch_mean` uses to average the others over the applied steps only.
    """
    guarded = max_consecutive_skips > 0
    optimizer = skip_non_finite(optimizer, max_consecutive_skips)

    def train_step(state: TrainState, batch: dict, key: jax.Array):
        batch = batch_to_float(batch)
        update_key = None
        if update_fn is not None:
            key, update_key = jax.random.split(key)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, out), grads = grad_fn(state.params, batch, key, state.step)
        metrics, aux = (out, None) if update_fn is None else out
        usable = True
        if guarded:  # a non-finite loss or a frozen state counts as a non-finite update
            usable = jnp.isfinite(loss) & (state.opt_state.notfinite_count < max_consecutive_skips)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, usable=usable)
        params = optax.apply_updates(state.params, updates)
        applied = opt_state.last_finite if guarded else None  # None: every update is applied
        model_state, update_metrics = state.model_state, {}
        if update_fn is not None:
            params, model_state, update_metrics = _non_gradient_update(
                update_fn, applied, params, state, aux, update_key
            )
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state)
        skipped = jnp.zeros((), jnp.float32) if applied is None else 1.0 - applied.astype(jnp.float32)
        return new_state, {**metrics, **update_metrics, "loss": loss, "skipped": skipped}  # the differentiated loss

    return jax.jit(train_step, donate_argnums=0)


def _non_gradient_update(update_fn: Callable, applied, params, state: TrainState, aux, key):
    """``update_fn``'s ``(params, model_state, metrics)`` after the optimizer's update; where ``applied`` is
    False (a skipped step), the params and model state as they are and zero metrics (None: always applied)."""

    def run(_):
        return update_fn(params, state.model_state, aux, state.step, key)

    if applied is None:
        return run(None)

    def keep(_):
        shapes = jax.eval_shape(run, None)[2]
        return params, state.model_state, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    return jax.lax.cond(applied, run, keep, None)


def epoch_batches(data_key: jax.Array, epoch: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """Indices ``[num_batches, batch_size]`` of one epoch: a fresh permutation, last partial batch dropped."""
    num_batches = num_examples // batch_size
    perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)
    return perm[: num_batches * batch_size].reshape(num_batches, batch_size)


def make_epoch_fn(train_step: Callable, batch_size: int, num_examples: int | None = None):
    """Returns ``epoch_fn(state, data, data_key, sample_key, epoch) -> (state, metrics)``, one ``lax.scan``.

    ``data``: device-resident arrays, examples on axis 0 (``{"x": [N, H, W, C], "y": [N]}``); ``metrics``:
    :func:`epoch_mean` of the steps. The batches come from the first ``num_examples`` rows (default all;
    fewer when rows were padded to split evenly over devices, :meth:`vae_jax.parallel.Plan.place_examples`).
    """

    def epoch_fn(state: TrainState, data: dict, data_key, sample_key, epoch):
        count = num_examples or jax.tree_util.tree_leaves(data)[0].shape[0]
        batch_indices = epoch_batches(data_key, epoch, count, batch_size)

        def body(state, idx):
            batch = jax.tree_util.tree_map(lambda a: a[idx], data)
            return train_step(state, batch, jax.random.fold_in(sample_key, state.step))

        state, metrics = jax.lax.scan(body, state, batch_indices)
        return state, epoch_mean(metrics)

    return epoch_fn


def loop_epoch(train_step: Callable, state: TrainState, data: dict, data_key, sample_key, epoch, batch_size: int):
    """The same epoch as :func:`make_epoch_fn`, as a Python loop over the jitted step."""
    num_examples = jax.tree_util.tree_leaves(data)[0].shape[0]
    batch_indices = epoch_batches(data_key, jnp.asarray(epoch), num_examples, batch_size)
    all_metrics = []
    for idx in batch_indices:
        batch = jax.tree_util.tree_map(lambda a: a[idx], data)
        state, metrics = train_step(state, batch, jax.random.fold_in(sample_key, state.step))
        all_metrics.append(metrics)
    stacked = jax.tree_util.tree_map(lambda *m: jnp.stack(m), *all_metrics)
    return state, epoch_mean(stacked)


def epoch_mean(step_metrics: dict) -> dict:
    """Epoch metrics from step metrics stacked on axis 0 (``[S]`` each, with ``skipped`` in {0, 1}).

    Each metric is averaged over the applied steps only (NaN if every step was skipped);
    ``skipped`` becomes ``skipped_steps``, the number of skipped steps in the epoch.
    """
    metrics = dict(step_metrics)
    skipped = metrics.pop("skipped")
    applied = 1.0 - skipped  # [S]
    count = jnp.sum(applied)

    def mean_over_applied(values):  # values: [S, ...]
        mask = applied.reshape(applied.shape + (1,) * (values.ndim - 1)) > 0
        total = jnp.sum(jnp.where(mask, values, 0), axis=0)
        return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)

    out = jax.tree_util.tree_map(mean_over_applied, metrics)
    out["skipped_steps"] = jnp.sum(skipped)
    return out


def replicated_epoch_mean(step_metrics: list[dict]) -> dict:
    """:func:`epoch_mean` of each replica, from a Python list of step metrics ``{name: [R]}``: ``{name: [R]}``.

    The per-step programs (``--epoch-loop steps``, ``--stream``) reduce their steps with it.
    """
    stacked = jax.tree_util.tree_map(lambda *m: jnp.stack(m, axis=1), *step_metrics)  # {name: [R, S]}
    return _replicated_epoch_mean(stacked)


_replicated_epoch_mean = jax.jit(jax.vmap(epoch_mean))


def make_replicated_epoch_fn(train_step: Callable, batch_size: int):
    """The fused epoch vmapped over replicas and jitted, with the state donated.

    ``(state[R], data, data_keys[R], sample_keys[R], epoch) -> (state[R], metrics[R])``, ``[R]`` a leading
    replica axis (``data`` and ``epoch`` shared); ``metrics`` the :func:`epoch_mean` of each replica's steps.
    """
    epoch_fn = make_epoch_fn(train_step, batch_size)
    replicated = jax.vmap(epoch_fn, in_axes=(0, None, 0, 0, None))
    return jax.jit(replicated, donate_argnums=0)


def init_replicated_state(
    init_params_fn: Callable, optimizer, init_keys: jax.Array, init_model_state_fn: Callable | None = None
) -> TrainState:
    """Train states for R replicas, stacked on a leading axis, from ``init_keys[R]``.

    ``init_model_state_fn(params) -> model_state`` builds a task's non-gradient state (none by default).
    Compiled as one program (bit-identical to running op by op, which compiles every draw separately) with
    :func:`vae_jax.compiling.run_once_compiler_options`; the timings are in docs/benchmarks.md.
    """
    return _jitted_init(init_params_fn, optimizer, init_model_state_fn)(init_keys)


def abstract_replicated_state(
    init_params_fn: Callable, optimizer, init_keys: jax.Array, init_model_state_fn: Callable | None = None
) -> TrainState:
    """:func:`init_replicated_state`'s shapes and dtypes on this process's first device, neither compiled nor run.

    A template to restore a checkpoint into without compiling the initial state (docs/benchmarks.md).
    """
    shapes = jax.eval_shape(_jitted_init(init_params_fn, optimizer, init_model_state_fn), init_keys)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)


@functools.lru_cache(maxsize=16)
def _jitted_init(init_params_fn: Callable, optimizer, init_model_state_fn: Callable | None):
    def init_one(key):
        params = init_params_fn(key)
        model_state = None if init_model_state_fn is None else init_model_state_fn(params)
        return init_train_state(params, optimizer, model_state)

    return compiling.jit_run_once(jax.vmap(init_one))
