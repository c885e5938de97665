"""The JAX epochs the benchmark times: the runner path (``runner.train``'s own epoch), a minimal flax + optax
scan loop written from scratch (the yardstick), and the vmapped and jitted-step variants."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.timing import SteadyEpochs
from vae_jax import parallel, tasks, train


class MinimalVAE(nn.Module):
    """784-400-20 VAE with a Bernoulli decoder, written without the library."""

    @nn.compact
    def __call__(self, x, key):
        x = x.reshape(x.shape[0], -1)
        h = nn.relu(nn.Dense(400)(x))
        mean, logvar = nn.Dense(20)(h), nn.Dense(20)(h)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        logits = nn.Dense(784)(nn.relu(nn.Dense(400)(z)))
        recon = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=-1)
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)
        return jnp.mean(recon + kl)


def make_minimal_epoch(batch_size: int, learning_rate: float = 1e-3):
    """``(init(key) -> (params, opt_state), epoch(params, opt_state, x, key) -> (params, opt_state, loss))``, jitted."""
    model = MinimalVAE()
    optimizer = optax.adam(learning_rate)

    def init(key):
        params = model.init(key, jnp.zeros((1, 784)), key)
        return params, optimizer.init(params)

    def epoch(params, opt_state, x, key):
        perm_key, step_key = jax.random.split(key)
        steps = x.shape[0] // batch_size
        order = jax.random.permutation(perm_key, x.shape[0])[: steps * batch_size].reshape(steps, batch_size)

        def step(carry, inputs):
            params, opt_state = carry
            idx, key = inputs
            loss, grads = jax.value_and_grad(model.apply)(params, x[idx], key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(
            step, (params, opt_state), (order, jax.random.split(step_key, steps))
        )
        return params, opt_state, jnp.mean(losses)

    return jax.jit(init), jax.jit(epoch, donate_argnums=(0, 1))


class RunnerPath:
    """The epoch program ``runner.train`` builds for ``config`` (same task, optimizer, keys, plan, epoch loop and
    data placement); ``task_fn(config, image_shape) -> (model, task)`` builds the task (default: the MLP VAE)."""

    def __init__(
        self,
        x: np.ndarray,
        config,
        task_fn=tasks.vae_task,
        epoch_loop: str | None = None,
    ):
        from vae_jax import runner

        _, self.task = task_fn(config, x.shape[1:])
        self.config = config
        self.optimizer = train.make_optimizer(config)
        self.seeds = config.seed_list()
        self.plan = parallel.make_plan(len(self.seeds), config.batch_size, config.devices)
        self.epoch_loop = parallel.choose_epoch_loop(
            epoch_loop or config.epoch_loop,
            jax.devices()[0].platform,
            lambda: runner.loss_has_convolution(
                self.task.loss_fn, jax.eval_shape(lambda: self.fresh()[0]), x, None, config.batch_size
            ),
        )
        # runner.train's epoch: one program (non-finite steps skipped and counted by train.skip_non_finite)
        self.epoch_fn = runner.make_epoch(self.task, self.optimizer, config, self.plan, self.epoch_loop, len(x))
        self.program = self.epoch_fn
        self.train_step = train.make_train_step(self.task.loss_fn, self.optimizer, self.task.update_fn)  # its step
        self.data = self.plan.place_examples(runner.host_split(x, None))

    def fresh(self):
        keys = train.replica_keys(self.seeds)
        state = train.init_replicated_state(self.task.init_params, self.optimizer, keys.init)
        return self.plan.place_replicated(state), self.plan.place_replicated(keys)

    def epoch_args(self) -> tuple:
        """A fresh state, the data, the seed's keys and epoch 0: the arguments of the epoch program (for lowering it)."""
        state, keys = self.fresh()
        return state, self.data, keys.data, keys.sample, jnp.int32(0)

    def steady(self, epoch_fn) -> SteadyEpochs:
        """Epochs of ``epoch_fn`` (this path's signature) on this path's fresh state, data and keys, each continuing
        the last (see :class:`SteadyEpochs`)."""
        return SteadyEpochs(
            self.fresh,
            lambda carry, i: (epoch_fn(carry[0], self.data, carry[1].data, carry[1].sample, jnp.int32(i))[0], carry[1]),
        )

    @functools.cached_property
    def time_epoch(self) -> SteadyEpochs:
        """Times one epoch of this path, continuing from the last."""
        return self.steady(self.epoch_fn)


class JaxVariants:
    """Every JAX variant of one batch size, compiled once, each timed on epochs that continue its own training."""

    def __init__(self, x: np.ndarray, pixels: np.ndarray, batch_size: int):
        self.runner = RunnerPath(pixels, tasks.VAEConfig(batch_size=batch_size))
        self.pixels = pixels
        self.batch_size = batch_size
        self.data = self.runner.data
        self.jit_step = self.runner.train_step
        self.vmapped = train.make_replicated_epoch_fn(self.jit_step, batch_size)
        self.minimal_init, self.minimal_epoch = make_minimal_epoch(batch_size)
        self.x = jnp.asarray(x)

    def time_runner_path(self) -> float:
        return self.runner.time_epoch()

    @functools.cached_property
    def unguarded(self) -> RunnerPath:
        """The same path with ``--max-consecutive-skips 0``: non-finite updates are applied, not skipped."""
        return RunnerPath(self.pixels, tasks.VAEConfig(batch_size=self.batch_size, max_consecutive_skips=0))

    def time_runner_path_unguarded(self) -> float:
        return self.unguarded.time_epoch()

    def minimal_args(self) -> tuple:
        params, opt_state = self.minimal_init(jax.random.key(0))
        return params, opt_state, self.x, jax.random.key(1)

    @functools.cached_property
    def time_minimal_scan_loop(self) -> SteadyEpochs:
        def epoch(carry, i):
            params, opt_state, _ = self.minimal_epoch(carry[0], carry[1], self.x, jax.random.fold_in(carry[2], i))
            return params, opt_state, carry[2]

        return SteadyEpochs(lambda: self.minimal_args()[:2] + (jax.random.key(1),), epoch)

    @functools.cached_property
    def time_vmapped_one_seed(self) -> SteadyEpochs:
        return self.runner.steady(jax.jit(self.vmapped, donate_argnums=0))

    @functools.cached_property
    def time_jit_step_loop(self) -> SteadyEpochs:
        keys = train.run_keys(0)

        def start():
            return train.init_train_state(self.runner.task.init_params(keys.init), self.runner.optimizer)

        return SteadyEpochs(
            start,
            lambda state, i: train.loop_epoch(
                self.jit_step, state, self.data, keys.data, keys.sample, i, self.batch_size
            )[0],
        )
