"""Time the training path `experiments.vae` runs, beside a minimal flax + optax scan loop and PyTorch eager.

    python -m experiments.benchmark --out runs/benchmark.json                 # every section
    python -m experiments.benchmark --sections epoch,seeds --repeats 3        # some sections
    python -m experiments.benchmark --sections epoch --batch-sizes 128 --repeats 2  # quick look

All variants train the same model (784-400-20, Bernoulli decoder, Adam 1e-3)
on the same data for one epoch (N // batch steps). Each variant's timed epochs
continue its own training, as the epochs of a run do (a first, untimed epoch
compiles and warms up; see ``SteadyEpochs``). Each repeat times every variant
once, in turn, so machine noise hits all alike; the median over repeats is
reported (the JSON also keeps the minimum and every time). Sections:

  epoch    per-epoch seconds at each batch size of: ``runner_path``, the very
           epoch ``runner.train`` (so ``experiments.vae``) runs for one seed
           (``runner.make_epoch``: one program, every step's update passed
           through ``optax.apply_if_finite``; its seed layout is reported);
           ``minimal_scan_loop``, a ~100-line flax + optax ``lax.scan`` loop
           written here from scratch, with plain Adam;
           ``runner_path_unguarded``, the runner path with
           ``--max-consecutive-skips 0`` (non-finite updates applied, as in
           the minimal loop); ``vmapped_one_seed``, the vmapped
           replicated epoch with R = 1; ``jit_step_loop``, the jitted step
           called from Python; ``torch_eager`` when ``torch`` is
           importable (``pip install -e ".[bench]"``). Achieved GFLOP/s counts
           the model's matrix multiplies and is set beside a plain float32
           matrix-multiply rate measured in the same run.
  conv     the default conv VAE of ``experiments.conv_vae`` at
           ``--conv-batch-size``: its runner path with the epoch loop
           ``--epoch-loop auto`` picks (``steps`` on CPU), the scan-fused
           epoch, and the same network in PyTorch eager.
  profile  three epochs of the runner path and of the minimal loop at
           ``--profile-batch-size`` under ``jax.profiler.trace``: XLA's own
           time per executed op (own time, nested ops subtracted), grouped by
           kind (matrix multiplies, fused elementwise, fused reductions, copies
           and slices, control flow) and the top ops, and the runner path's
           extra time by kind.
  seeds    N = 1, 8, 32 seeds at batch 16 and 128: the ``vmap`` and ``loop``
           layouts against N x one seed, and the layout ``--seed-layout auto``
           picks.
  target   seconds (and epochs) of the runner path to reach a test neg-ELBO.
  devices  the runner path on 1 and 8 simulated CPU devices (a subprocess with
           ``--xla_force_host_platform_device_count=8``).
  startup  whole-process seconds of ``experiments.vae --epochs 10``
           (``--startup-epochs``) with cold caches, a cold compilation cache
           only, and warm caches; and of ``experiments.torch_vae``, the same
           job in PyTorch eager, when ``torch`` is importable. The runs
           alternate, ``--startup-rounds`` times; medians are reported.
  commands each training experiment's command (``COMMANDS``: few epochs) as a
           whole process, from scratch with the phases it printed (start-up,
           compilation, training, and the analyses and figures after training),
           then again in the same workdir with nothing left to train.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import cli, evaluate, parallel, tasks, train
from vae_jax import data as data_lib
from vae_jax.cli import user_errors

SECTIONS = ("epoch", "conv", "profile", "seeds", "target", "devices", "startup", "commands")


# --- a minimal flax + optax scan-fused training loop: the yardstick -------------------------


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


# --- what is timed --------------------------------------------------------------------------


def model_flops_per_example(latent_dim: int = 20, hidden: int = 400, pixels: int = 784) -> int:
    """Multiply-add FLOPs of one training example: forward matmuls x 3 (forward + backward)."""
    forward_macs = pixels * hidden + 2 * hidden * latent_dim + latent_dim * hidden + hidden * pixels
    return 3 * 2 * forward_macs


def matmul_gflops(size: int = 1024, repeats: int = 10) -> float:
    """Float32 square matrix-multiply GFLOP/s: the machine's practical limit for this work."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


class SteadyEpochs:
    """Times epochs as a training run has them: each call trains one epoch on the state the previous call left.

    ``start()`` builds the first carry (a fresh state, on the first call only); ``epoch(carry, i)`` trains epoch
    ``i`` and returns the next carry. The first call (the benchmark's warm-up) also compiles; the timed calls
    that follow run on a donated, already-trained state, as epochs 2, 3, ... of ``runner.train`` do. (An epoch
    timed on a freshly built state each time runs 10-25% slower on this CPU: new buffers are touched for the
    first time.)
    """

    def __init__(self, start: Callable[[], Any], epoch: Callable[[Any, int], Any]):
        self.start, self.epoch = start, epoch
        self.carry, self.count = None, 0

    def __call__(self) -> float:
        if self.carry is None:
            self.carry = self.start()
        jax.block_until_ready(self.carry)
        t0 = time.perf_counter()
        self.carry = jax.block_until_ready(self.epoch(self.carry, self.count))
        self.count += 1
        return time.perf_counter() - t0


class RunnerPath:
    """The epoch program ``runner.train`` builds for ``config`` (same task, optimizer, keys, plan, epoch loop and
    data placement); ``task_fn(config, image_shape) -> (model, task)`` builds the task (default: the MLP VAE)."""

    def __init__(
        self,
        x: np.ndarray,
        config,
        seed_layout: str | None = None,
        task_fn=tasks.vae_task,
        epoch_loop: str | None = None,
    ):
        from vae_jax import runner

        _, self.task = task_fn(config, x.shape[1:])
        self.config = config
        self.optimizer = runner.make_optimizer(config)
        self.seeds = config.seed_list()
        self.plan = parallel.make_plan(
            len(self.seeds), config.batch_size, config.devices, seed_layout or config.seed_layout
        )
        self.epoch_loop = parallel.choose_epoch_loop(
            epoch_loop or config.epoch_loop,
            jax.devices()[0].platform,
            lambda: runner.loss_has_convolution(
                self.task.loss_fn, jax.eval_shape(lambda: self.fresh()[0]), x, None, config.batch_size
            ),
        )
        # runner.train's epoch: one program (non-finite steps skipped and counted by optax.apply_if_finite)
        self.epoch_fn = runner.make_epoch(self.task, self.optimizer, config, self.plan, self.epoch_loop, len(x))
        self.program = self.epoch_fn
        self.train_step = train.make_train_step(self.task.loss_fn, self.optimizer, self.task.update_fn)  # its step
        self.data = self.plan.place_examples(runner.host_split(x, None))

    def fresh(self):
        keys = jax.vmap(train.run_keys)(jnp.asarray(self.seeds))
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


class TorchVariant:
    """The same VAE, loss, optimizer and batch in PyTorch, trained eagerly (784-400-20 MLP)."""

    def __init__(self, x: np.ndarray, batch_size: int):
        import torch

        self.torch = torch
        torch.manual_seed(0)
        self.x = torch.from_numpy(self.inputs(x))
        self.batch_size = batch_size

    def inputs(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).copy()

    def networks(self) -> tuple:
        """``(encoder, mean head, log-variance head, decoder)``, freshly initialised."""
        nn_ = self.torch.nn
        return (
            nn_.Sequential(nn_.Linear(784, 400), nn_.ReLU()),
            nn_.Linear(400, 20),
            nn_.Linear(400, 20),
            nn_.Sequential(nn_.Linear(20, 400), nn_.ReLU(), nn_.Linear(400, 784)),
        )

    @functools.cached_property
    def trained(self) -> tuple:
        """The networks and their Adam optimizer, built on the first epoch and trained on by every later one."""
        networks = self.networks()
        params = [p for m in networks for p in m.parameters()]
        return networks, self.torch.optim.Adam(params, lr=1e-3)

    def time_epoch(self) -> float:
        """One epoch, continuing the training of the previous call (the first call starts it)."""
        torch = self.torch
        (encoder, mean_l, logvar_l, decoder), opt = self.trained
        perm = torch.randperm(len(self.x))
        steps = len(self.x) // self.batch_size
        t0 = time.perf_counter()
        for i in range(steps):
            xb = self.x[perm[i * self.batch_size : (i + 1) * self.batch_size]]
            h = encoder(xb)
            mean, logvar = mean_l(h), logvar_l(h)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            recon = torch.nn.functional.binary_cross_entropy_with_logits(decoder(z), xb, reduction="sum")
            kl = 0.5 * torch.sum(torch.exp(logvar) + mean**2 - 1.0 - logvar)
            loss = (recon + kl) / self.batch_size
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0


class TorchConvVariant(TorchVariant):
    """The default convolutional VAE (``experiments.conv_vae``: convs 16, 32 of 4x4 stride 2, hidden 128, latent 16,
    Bernoulli decoder) in PyTorch, trained eagerly with the same loss, optimizer and batch.

    PyTorch's padding 1 gives XLA's SAME output sizes for these 4x4 stride-2 layers (28 -> 14 -> 7 and back), so
    both do the same arithmetic per step.
    """

    def inputs(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # NCHW

    def networks(self) -> tuple:
        nn_ = self.torch.nn
        encoder = nn_.Sequential(
            nn_.Conv2d(1, 16, 4, 2, 1),
            nn_.ReLU(),
            nn_.Conv2d(16, 32, 4, 2, 1),
            nn_.ReLU(),
            nn_.Flatten(),
            nn_.Linear(32 * 7 * 7, 128),
            nn_.ReLU(),
        )
        decoder = nn_.Sequential(
            nn_.Linear(16, 128),
            nn_.ReLU(),
            nn_.Linear(128, 32 * 7 * 7),
            nn_.ReLU(),
            nn_.Unflatten(1, (32, 7, 7)),
            nn_.ConvTranspose2d(32, 16, 4, 2, 1),
            nn_.ReLU(),
            nn_.ConvTranspose2d(16, 1, 4, 2, 1),
        )
        return encoder, nn_.Linear(128, 16), nn_.Linear(128, 16), decoder


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _medians(timers: dict, repeats: int) -> dict:
    """Calls every timer once (compile/warm-up), then ``repeats`` interleaved rounds; median seconds and all times."""
    for fn in timers.values():
        fn()
    times = {name: [] for name in timers}
    for _ in range(repeats):
        for name, fn in timers.items():
            times[name].append(fn())
    return {
        name: {"seconds_per_epoch": statistics.median(ts), "min_seconds": min(ts), "all_seconds": ts}
        for name, ts in times.items()
    }


# --- sections -------------------------------------------------------------------------------


def epoch_section(x: np.ndarray, pixels: np.ndarray, batch_sizes, repeats: int, matmul: float) -> dict:
    results = {}
    for batch_size in batch_sizes:
        jv = JaxVariants(x, pixels, batch_size)
        timers = {
            "runner_path": jv.time_runner_path,
            "minimal_scan_loop": jv.time_minimal_scan_loop,
            "runner_path_unguarded": jv.time_runner_path_unguarded,
            "vmapped_one_seed": jv.time_vmapped_one_seed,
            "jit_step_loop": jv.time_jit_step_loop,
        }
        if torch_available():
            timers["torch_eager"] = TorchVariant(x, batch_size).time_epoch
        row = _medians(timers, repeats)
        steps = len(x) // batch_size
        flops = model_flops_per_example() * steps * batch_size
        for entry in row.values():
            entry["gflops"] = flops / entry["seconds_per_epoch"] / 1e9
            entry["percent_of_matmul"] = 100 * entry["gflops"] / matmul
        runner_s = row["runner_path"]["seconds_per_epoch"]
        # Each round times the runner path and then the minimal loop: the median of the rounds' own ratios
        # cancels the machine's drift between rounds, which the ratio of the two medians keeps.
        paired = statistics.median(
            r / m for r, m in zip(row["runner_path"]["all_seconds"], row["minimal_scan_loop"]["all_seconds"])
        )
        row = {
            "steps_per_epoch": steps,
            "runner_path_layout": jv.runner.plan.seed_layout,
            "runner_path_vs_minimal": runner_s / row["minimal_scan_loop"]["seconds_per_epoch"],
            "runner_path_vs_minimal_paired": paired,
            "runner_path_unguarded_vs_minimal": (
                row["runner_path_unguarded"]["seconds_per_epoch"] / row["minimal_scan_loop"]["seconds_per_epoch"]
            ),
            **row,
        }
        if "torch_eager" in row:
            row["runner_path_speedup_over_torch"] = row["torch_eager"]["seconds_per_epoch"] / runner_s
        results[str(batch_size)] = row
        print(
            f"epoch, batch {batch_size}: "
            + ", ".join(f"{k} {v['seconds_per_epoch']:.3f}s" for k, v in row.items() if isinstance(v, dict)),
            file=sys.stderr,
        )
    return results


def seeds_section(x: np.ndarray, batch_sizes, seed_counts, repeats: int) -> dict:
    results = {}
    for batch_size in batch_sizes:
        one = RunnerPath(x, tasks.VAEConfig(batch_size=batch_size))
        timers = {"1": one.time_epoch}
        for n in (n for n in seed_counts if n > 1):
            for layout in ("vmap", "loop"):
                path = RunnerPath(x, tasks.VAEConfig(batch_size=batch_size, seeds=str(n)), seed_layout=layout)
                timers[f"{n}_{layout}"] = path.time_epoch
        medians = _medians(timers, repeats)
        single = medians["1"]["seconds_per_epoch"]
        row = {"one_seed": medians["1"]}
        for n in (n for n in seed_counts if n > 1):
            entry = {layout: medians[f"{n}_{layout}"] for layout in ("vmap", "loop")}
            for layout in ("vmap", "loop"):
                entry[layout]["speedup_over_n_single_runs"] = n * single / entry[layout]["seconds_per_epoch"]
            entry["faster"] = min(("vmap", "loop"), key=lambda k: entry[k]["seconds_per_epoch"])
            entry["auto_picks"] = parallel.choose_seed_layout("auto", n, batch_size, jax.devices()[0].platform)
            row[str(n)] = entry
            print(
                f"seeds, batch {batch_size}, N={n}: vmap {entry['vmap']['seconds_per_epoch']:.3f}s, "
                f"loop {entry['loop']['seconds_per_epoch']:.3f}s, N x one seed {n * single:.3f}s",
                file=sys.stderr,
            )
        results[str(batch_size)] = row
    return results


def conv_section(x: np.ndarray, pixels: np.ndarray, batch_size: int, repeats: int) -> dict:
    """The default conv VAE (``experiments.conv_vae``): its runner path (the epoch loop ``--epoch-loop auto``
    picks), the same with the scan-fused epoch, and PyTorch eager."""
    from vae_jax.tasks import conv_vae

    config = conv_vae.ConvVAEConfig(batch_size=batch_size)
    runner_path = RunnerPath(pixels, config, task_fn=conv_vae.conv_vae_task)
    timers = {"runner_path": runner_path.time_epoch}
    if runner_path.epoch_loop != "scan":
        timers["runner_path_scan"] = RunnerPath(
            pixels, config, task_fn=conv_vae.conv_vae_task, epoch_loop="scan"
        ).time_epoch
    if torch_available():
        timers["torch_eager"] = TorchConvVariant(x, batch_size).time_epoch
    row = _medians(timers, repeats)
    result = {
        "batch_size": batch_size,
        "steps_per_epoch": len(x) // batch_size,
        "runner_path_epoch_loop": runner_path.epoch_loop,
        **row,
    }
    if "torch_eager" in row:
        result["runner_path_speedup_over_torch"] = (
            row["torch_eager"]["seconds_per_epoch"] / row["runner_path"]["seconds_per_epoch"]
        )
    print(
        f"conv, batch {batch_size}: " + ", ".join(f"{k} {v['seconds_per_epoch']:.3f}s" for k, v in row.items()),
        file=sys.stderr,
    )
    return result


def target_section(x: np.ndarray, x_test: np.ndarray, target: float, max_epochs: int, batch_size: int = 128) -> dict:
    """Training seconds (evaluation excluded) of the runner path until the test neg-ELBO is at most ``target``."""
    path = RunnerPath(x, tasks.VAEConfig(batch_size=batch_size))
    eval_fn = parallel.make_eval_program(path.task.eval_fn, 500, path.plan)
    test = path.plan.place_shared({"x": jnp.asarray(x_test)})
    path.time_epoch()  # compile
    state, keys = path.fresh()
    seconds, curve = 0.0, []
    for epoch in range(max_epochs):
        t0 = time.perf_counter()
        state, _ = path.epoch_fn(state, path.data, keys.data, keys.sample, jnp.int32(epoch))
        jax.block_until_ready(state)
        seconds += time.perf_counter() - t0
        neg_elbo = float(np.mean(jax.device_get(eval_fn(state.params, test, evaluate.eval_key()))["neg_elbo"]))
        curve.append({"epoch": epoch + 1, "train_seconds": seconds, "test_neg_elbo": neg_elbo})
        if neg_elbo <= target:
            break
    reached = curve[-1]["test_neg_elbo"] <= target
    print(
        f"target: test neg-ELBO {curve[-1]['test_neg_elbo']:.2f} after {len(curve)} epochs, {seconds:.1f}s"
        + ("" if reached else f" (target {target} not reached)"),
        file=sys.stderr,
    )
    return {
        "target_neg_elbo": target,
        "batch_size": batch_size,
        "reached": reached,
        "seconds": seconds if reached else None,
        "epochs": len(curve) if reached else None,
        "curve": curve,
    }


def devices_probe(x: np.ndarray, batch_size: int, repeats: int) -> dict:
    """Runner-path epoch seconds on 1 device and on every local device (run inside the 8-device subprocess)."""
    paths = {
        str(n): RunnerPath(x, tasks.VAEConfig(batch_size=batch_size, devices=str(n)))
        for n in sorted({1, jax.local_device_count()})
    }
    medians = _medians({n: p.time_epoch for n, p in paths.items()}, repeats)
    for n, p in paths.items():
        medians[n]["mesh"] = p.plan.summary()["mesh"]
        medians[n]["examples_per_second"] = (len(x) // batch_size) * batch_size / medians[n]["seconds_per_epoch"]
    return medians


def devices_section(args, batch_size: int = 128) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable,
        "-m",
        "experiments.benchmark",
        "--devices-probe",
        "--dataset",
        args.dataset,
        "--batch-sizes",
        str(batch_size),
        "--repeats",
        str(args.repeats),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    print(
        "devices: " + ", ".join(f"{n} device(s) {v['seconds_per_epoch']:.3f}s" for n, v in result.items()),
        file=sys.stderr,
    )
    return {"simulated_cpu_devices": True, "batch_size": batch_size, **result}


DATA_MOVEMENT = {
    "copy",
    "slice",
    "dynamic-slice",
    "dynamic-update-slice",
    "gather",
    "scatter",
    "transpose",
    "concatenate",
    "pad",
    "bitcast",
    "broadcast",
    "reshape",
    "iota",
    "parameter",
    "constant",
    "tuple",
    "get-tuple-element",
    "convert",
}


def hlo_opcodes(hlo_text: str) -> dict[str, set[str]]:
    """For each instruction of a compiled module (``compiled.as_text()``), the HLO opcodes it runs: its own, or
    for a fusion those of the computation it calls."""
    instruction = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\((.*)$")
    computations: dict[str, set[str]] = {}
    calls: dict[str, tuple[str, str | None]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header and " = " not in line:
            current = computations.setdefault(header.group(1), set())
            continue
        match = instruction.match(line)
        if match and current is not None:
            name, opcode, rest = match.groups()
            current.add(opcode)
            called = re.search(r"calls=%?([\w.\-]+)", rest)
            calls[name] = (opcode, called.group(1) if called else None)
    return {
        name: (computations.get(called, {opcode}) if opcode == "fusion" and called else {opcode})
        for name, (opcode, called) in calls.items()
    }


def op_kind(opcodes: set[str]) -> str:
    """What an executed op does, from the HLO opcodes it runs (see :func:`hlo_opcodes`)."""
    if opcodes & {"dot", "convolution"}:
        return "matrix multiplies (with fused epilogues)"
    if opcodes & {"while", "conditional", "call"}:
        return "control flow (own time)"
    if "reduce" in opcodes:
        return "reductions (fused)"
    if opcodes <= DATA_MOVEMENT:
        return "copies, slices, gathers"
    return "elementwise (fused)"


def op_self_times(trace_events: list[dict]) -> dict[str, dict[str, float]]:
    """Microseconds of own time (nested ops subtracted) per HLO op, per compiled module, from a profiler trace.

    ``trace_events``: the ``traceEvents`` of the Perfetto JSON that ``jax.profiler.trace(...,
    create_perfetto_trace=True)`` writes; XLA:CPU records each executed op with ``args.hlo_module``
    and ``args.hlo_op``. A ``while`` op's events enclose those of its body on the same thread.
    """
    by_thread: dict = {}
    for event in trace_events:
        args = event.get("args") or {}
        if event.get("ph") == "X" and "hlo_op" in args and "dur" in event:
            by_thread.setdefault((event.get("pid"), event.get("tid")), []).append(
                {
                    "ts": float(event["ts"]),
                    "dur": float(event["dur"]),
                    "module": args.get("hlo_module", "?"),
                    "op": args["hlo_op"],
                }
            )
    totals: dict[str, dict[str, float]] = {}
    for events in by_thread.values():
        events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[dict] = []
        for event in events:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= event["ts"]:
                stack.pop()
            event["own"] = event["dur"]
            if stack:
                stack[-1]["own"] -= event["dur"]
            stack.append(event)
        for event in events:
            ops = totals.setdefault(event["module"], {})
            ops[event["op"]] = ops.get(event["op"], 0.0) + max(event["own"], 0.0)
    return totals


def profile_epoch(fn, name: str, opcodes: dict[str, set[str]], epochs: int = 3) -> dict:
    """``epochs`` calls of ``fn`` (an epoch) under XLA's profiler, per epoch: op time by kind (``opcodes`` of its
    compiled module, :func:`hlo_opcodes`) and the top ops; the wall time is the median epoch's."""
    import glob
    import gzip

    fn()
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            seconds = statistics.median(fn() for _ in range(epochs))
        paths = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)
        if not paths:
            return {"error": "the profiler wrote no perfetto_trace.json.gz"}
        with gzip.open(paths[0]) as f:
            trace = json.load(f)
    modules = op_self_times(trace["traceEvents"] if isinstance(trace, dict) else trace)
    if not modules:
        return {"error": "the trace holds no XLA op events"}
    module = max(modules, key=lambda m: sum(modules[m].values()))  # the epoch program
    ops = {op: us / epochs for op, us in modules[module].items()}
    total = sum(ops.values())
    kinds: dict[str, float] = {}
    for op, us in ops.items():
        kind = op_kind(opcodes.get(op, {op.split(".")[0]}))
        kinds[kind] = kinds.get(kind, 0.0) + us
    top = sorted(ops.items(), key=lambda item: -item[1])[:12]
    print(
        f"profile {name}: {seconds:.3f}s wall, {total / 1e3:.1f} ms in ops of {module}: "
        + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(kinds.items(), key=lambda item: -item[1])),
        file=sys.stderr,
    )
    return {
        "wall_seconds": seconds,
        "module": module,
        "op_ms": total / 1e3,
        "ms_by_kind": {k: v / 1e3 for k, v in sorted(kinds.items(), key=lambda item: -item[1])},
        "top_ops_ms": {op: us / 1e3 for op, us in top},
    }


def profile_section(x: np.ndarray, pixels: np.ndarray, batch_size: int) -> dict:
    """Where one epoch's time goes, by XLA's own op timings: the runner path beside the minimal scan loop."""
    jv = JaxVariants(x, pixels, batch_size)
    runner_hlo = jv.runner.program.lower(*jv.runner.epoch_args()).compile().as_text()
    minimal_hlo = jv.minimal_epoch.lower(*jv.minimal_args()).compile().as_text()
    result = {
        "batch_size": batch_size,
        "runner_path": profile_epoch(jv.time_runner_path, "runner_path", hlo_opcodes(runner_hlo)),
        "minimal_scan_loop": profile_epoch(jv.time_minimal_scan_loop, "minimal_scan_loop", hlo_opcodes(minimal_hlo)),
    }
    runner_kinds = result["runner_path"].get("ms_by_kind", {})
    minimal_kinds = result["minimal_scan_loop"].get("ms_by_kind", {})
    result["runner_minus_minimal_ms_by_kind"] = {
        k: runner_kinds.get(k, 0.0) - minimal_kinds.get(k, 0.0) for k in sorted(set(runner_kinds) | set(minimal_kinds))
    }
    return result


def startup_section(args, epochs: int = 10, rounds: int = 3) -> dict:
    """Whole-process seconds of ``experiments.vae --epochs N`` with cold and warm caches (a fresh cache directory),
    and of its PyTorch equivalent ``experiments.torch_vae`` when torch is importable.

    The runs alternate, ``rounds`` times (cold caches, cold compilation cache, warm caches, PyTorch, then again),
    so a slower or faster stretch of the machine falls on every variant alike; the median is reported.
    """
    runs = [("cold_caches", "experiments.vae"), ("cold_compilation_cache", "experiments.vae")]
    runs += [("warm_caches", "experiments.vae")] + (
        [("torch_eager", "experiments.torch_vae")] if torch_available() else []
    )
    seconds, tests = {name: [] for name, _ in runs}, {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        env = {**os.environ, "VAE_JAX_CACHE_DIR": cache}
        for r in range(rounds):
            for name, module in runs:
                if name == "cold_caches":
                    shutil.rmtree(cache, ignore_errors=True)
                if name == "cold_compilation_cache":
                    shutil.rmtree(os.path.join(cache, "xla"), ignore_errors=True)
                workdir = os.path.join(tmp, f"{name}-{r}")
                outcome = _whole_run(module, ["--epochs", str(epochs), "--dataset", args.dataset], workdir, env)
                if isinstance(outcome, str):
                    return {"error": outcome}
                seconds[name].append(outcome[0])
                tests[name] = outcome[1]
    results = {"epochs": epochs, "rounds": rounds}
    for name in seconds:
        results[name] = {
            "seconds": float(np.median(seconds[name])),
            "runs": seconds[name],
            "test_neg_elbo": tests[name],
        }
    print("startup (median): " + ", ".join(f"{k} {results[k]['seconds']:.1f}s" for k in seconds), file=sys.stderr)
    return results


def _whole_run(module: str, common: list[str], workdir: str, env: dict) -> tuple[float, float] | str:
    """(whole-process seconds, test neg-ELBO) of ``python -m module``; an error line if it failed."""
    flags = [] if module == "experiments.torch_vae" else ["--no-progress", "--no-tensorboard", "--no-resume"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", module, *common, *flags, "--workdir", workdir], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return f"{module}: " + (
            proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        )
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    test = summary["test_neg_elbo"] if module == "experiments.torch_vae" else summary["test"]["neg_elbo"]["mean"]
    return seconds, test


# Each training experiment's command (the README's, with few epochs) for the commands section.
COMMANDS = (
    ("vae", ["--epochs", "2"]),
    ("conv_vae", ["--epochs", "2"]),
    ("cvae", ["--epochs", "2"]),
    ("hvae", ["--epochs", "2"]),
    ("autoencoder", ["--epochs", "2"]),
    ("beta_vae", ["--epochs", "1"]),
    ("latent_sweep", ["--epochs", "1", "--latent-sizes", "2,10"]),
    ("latent_space", ["--epochs", "1"]),
    ("pca_vs_linear_ae", ["--epochs", "20"]),
    ("vqvae", ["--epochs", "1", "--prior-epochs", "1"]),
)


def _phases_line(stderr: str) -> dict:
    """The phases an experiment printed last on stderr (``phases: startup 1.2 s, ... (total 9.9 s)``)."""
    lines = [line for line in stderr.splitlines() if line.startswith("phases: ")]
    if not lines:
        return {}
    return {name: float(value) for name, value in re.findall(r"(\w+) ([\d.]+) s", lines[-1].split("(total")[0])}


def commands_section(args) -> dict:
    """Each experiment's command (:data:`COMMANDS`) as a whole process, twice in one workdir: trained from
    scratch, with its phases, then again with nothing left to train. Shares one cache directory, so the
    judging classifier and compiled programs of earlier commands may be reused, as on a user's machine."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "VAE_JAX_CACHE_DIR": os.path.join(tmp, "cache")}
        for name, flags in COMMANDS:
            command = [sys.executable, "-m", f"experiments.{name}", "--dataset", args.dataset, *flags]
            command += ["--workdir", os.path.join(tmp, name)]
            row = {"flags": " ".join(flags)}
            for run in ("fresh", "rerun"):
                t0 = time.perf_counter()
                proc = subprocess.run(command, env=env, capture_output=True, text=True)
                row[f"{run}_seconds"] = time.perf_counter() - t0
                if proc.returncode != 0:
                    row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
                    break
                row[f"{run}_phases"] = _phases_line(proc.stderr)
            results[name] = row
            print(
                f"commands: {name} {row.get('fresh_seconds', 0):.1f} s, rerun {row.get('rerun_seconds', 0):.1f} s",
                file=sys.stderr,
            )
    return results


def print_commands(results: dict) -> None:
    """The commands section as a table: whole process, after training, rerun."""
    print("| command | whole process | start-up | compilation | training | after training | rerun |")
    print("|---|---|---|---|---|---|---|")
    for name, row in results.items():
        if "error" in row:
            print(f"| `experiments.{name} {row['flags']}` | failed: {row['error']} | | | | | |")
            continue
        p = row["fresh_phases"]
        after = sum(p.get(k, 0.0) for k in ("analyses", "figures"))
        print(
            f"| `experiments.{name} {row['flags']}` | {row['fresh_seconds']:.1f} s | {p.get('startup', 0):.1f} s "
            f"| {p.get('compilation', 0):.1f} s | {p.get('training', 0):.1f} s | {after:.1f} s "
            f"| {row['rerun_seconds']:.1f} s |"
        )


# --- command line -----------------------------------------------------------------------------


def _int_list(parser, flag_name: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        parser.error(f"{flag_name} takes comma-separated positive integers, got {text!r}")
    return values


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,
    }
    if torch_available():
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


@user_errors(data_lib.DataError)
def main(argv=None) -> dict:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.DefaultsHelpFormatter)
    parser.add_argument("--dataset", default="mnist", help="dataset spec (28x28x1 images)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--batch-sizes", default="16,128,512", help="batch sizes of the epoch section")
    parser.add_argument("--profile-batch-size", type=int, default=128, help="batch size of the profile section")
    parser.add_argument("--seed-batch-sizes", default="16,128", help="batch sizes of the seeds section")
    parser.add_argument("--seeds", default="1,8,32", help="seed counts N of the seeds section")
    parser.add_argument("--conv-batch-size", type=int, default=128, help="batch size of the conv section")
    parser.add_argument(
        "--target-neg-elbo", type=float, default=125.0, help="test neg-ELBO (nats) of the target section"
    )
    parser.add_argument("--max-epochs", type=int, default=30, help="epoch limit of the target section")
    parser.add_argument("--startup-epochs", type=int, default=10, help="--epochs of the startup section's whole runs")
    parser.add_argument("--startup-rounds", type=int, default=3, help="alternating rounds of the startup section")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per variant (median reported)")
    parser.add_argument("--out", default="runs/benchmark.json", help="output JSON file")
    parser.add_argument("--devices-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        parser.error(f"--sections takes names from {', '.join(SECTIONS)}, got {args.sections!r}")
    batch_sizes = _int_list(parser, "--batch-sizes", args.batch_sizes)
    seed_batch_sizes = _int_list(parser, "--seed-batch-sizes", args.seed_batch_sizes)
    seed_counts = _int_list(parser, "--seeds", args.seeds)
    if (
        min(
            args.repeats,
            args.max_epochs,
            args.startup_epochs,
            args.startup_rounds,
            args.profile_batch_size,
            args.conv_batch_size,
        )
        <= 0
    ):
        parser.error(
            "--repeats, --max-epochs, --startup-epochs, --startup-rounds, --profile-batch-size and --conv-batch-size "
            "must be positive"
        )
    dataset = data_lib.load_dataset(
        args.dataset, batch_size=max(batch_sizes + seed_batch_sizes + [args.profile_batch_size, args.conv_batch_size])
    )
    if dataset.image_shape != (28, 28, 1):
        parser.error(f"--dataset must have 28x28x1 images for the 784-400-20 model, got {dataset.image_shape}")
    x = dataset.x_train  # float32 in [0, 1], for the minimal loop and PyTorch
    pixels = dataset.train_pixels  # the stored form (uint8 for the digits), which runner.train puts on the device
    if args.devices_probe:
        print("RESULT" + json.dumps(devices_probe(pixels, batch_sizes[0], args.repeats)))
        return {}
    out_dir = os.path.dirname(os.path.abspath(args.out))
    try:  # before the long run, not after it
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        parser.error(f"--out {args.out}: cannot write ({err.strerror or type(err).__name__})")
    if not os.access(out_dir, os.W_OK):
        parser.error(f"--out {args.out}: cannot write (permission denied)")
    matmul = matmul_gflops()
    results = {
        "machine": machine(),
        "dataset": dataset.summary(),
        "matmul_gflops": matmul,
        "model_flops_per_example": model_flops_per_example(),
        "repeats": args.repeats,
        "timed_runner_path": "runner.make_epoch, the epoch runner.train (experiments.vae) runs",
    }
    if "epoch" in sections:
        results["epoch"] = epoch_section(x, pixels, batch_sizes, args.repeats, matmul)
    if "conv" in sections:
        results["conv"] = conv_section(x, pixels, args.conv_batch_size, args.repeats)
    if "profile" in sections:
        results["profile"] = profile_section(x, pixels, args.profile_batch_size)
    if "seeds" in sections:
        results["seeds"] = seeds_section(pixels, seed_batch_sizes, seed_counts, args.repeats)
    if "target" in sections:
        results["target"] = target_section(pixels, dataset.test_pixels, args.target_neg_elbo, args.max_epochs)
    if "devices" in sections:
        results["devices"] = devices_section(args)
    if "startup" in sections:
        results["startup"] = startup_section(args, args.startup_epochs, args.startup_rounds)
    if "commands" in sections:
        results["commands"] = commands_section(args)
    try:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    except OSError as err:
        parser.error(f"--out {args.out}: cannot write ({err.strerror or type(err).__name__})")
    print_table(results)
    return results


def print_table(results: dict) -> None:
    print(
        f"machine: {results['machine']['processor']}, {results['machine']['cpu_count']} cores, "
        f"{results['machine']['device']}; matrix multiply {results['matmul_gflops']:.1f} GFLOP/s (float32, 1024x1024)"
    )
    if "epoch" in results:
        print(
            "batch | runner path s/epoch (layout) | minimal scan s/epoch | runner/minimal (paired) | runner unguarded "
            "(/minimal) | vmapped R=1 | jit step loop | torch eager | runner GFLOP/s (% of matmul)"
        )
        for bs, row in results["epoch"].items():
            torch_s = row.get("torch_eager", {}).get("seconds_per_epoch")
            print(
                f"{bs:>5} | {row['runner_path']['seconds_per_epoch']:.3f} ({row['runner_path_layout']}) | "
                f"{row['minimal_scan_loop']['seconds_per_epoch']:.3f} | {row['runner_path_vs_minimal']:.2f} "
                f"({row['runner_path_vs_minimal_paired']:.3f}) | "
                f"{row['runner_path_unguarded']['seconds_per_epoch']:.3f} "
                f"({row['runner_path_unguarded_vs_minimal']:.2f}) | "
                f"{row['vmapped_one_seed']['seconds_per_epoch']:.3f} | {row['jit_step_loop']['seconds_per_epoch']:.3f} | "
                f"{'n/a' if torch_s is None else f'{torch_s:.3f}'} | {row['runner_path']['gflops']:.1f} "
                f"({row['runner_path']['percent_of_matmul']:.0f}%)"
            )
    if "conv" in results:
        c = results["conv"]
        torch_s = c.get("torch_eager", {}).get("seconds_per_epoch")
        scan_s = c.get("runner_path_scan", {}).get("seconds_per_epoch")
        print(
            f"conv VAE, batch {c['batch_size']}: runner path {c['runner_path']['seconds_per_epoch']:.3f} s/epoch "
            f"({c['runner_path_epoch_loop']})"
            + ("" if scan_s is None else f", scan-fused {scan_s:.3f} s")
            + (
                ", torch eager n/a"
                if torch_s is None
                else f", torch eager {torch_s:.3f} s ({c['runner_path_speedup_over_torch']:.2f}x)"
            )
        )
    if "seeds" in results:
        print("seeds: batch | N | vmap s/epoch (x N single) | loop s/epoch (x N single) | faster | auto picks")
        for bs, row in results["seeds"].items():
            for n, entry in row.items():
                if n == "one_seed":
                    continue
                print(
                    f"{bs:>5} | {n:>3} | {entry['vmap']['seconds_per_epoch']:.3f} "
                    f"({entry['vmap']['speedup_over_n_single_runs']:.2f}x) | {entry['loop']['seconds_per_epoch']:.3f} "
                    f"({entry['loop']['speedup_over_n_single_runs']:.2f}x) | {entry['faster']} | {entry['auto_picks']}"
                )
    if "profile" in results:
        for name in ("runner_path", "minimal_scan_loop"):
            p = results["profile"][name]
            if "error" in p:
                print(f"profile {name}: failed ({p['error']})")
                continue
            print(
                f"profile, batch {results['profile']['batch_size']}, {name}: {p['wall_seconds']:.3f} s wall, "
                f"{p['op_ms']:.1f} ms in XLA ops: " + ", ".join(f"{k} {v:.1f} ms" for k, v in p["ms_by_kind"].items())
            )
    if "target" in results:
        t = results["target"]
        print(
            f"time to test neg-ELBO <= {t['target_neg_elbo']}: "
            + (f"{t['seconds']:.1f} s of training, {t['epochs']} epochs" if t["reached"] else "not reached")
        )
    if "devices" in results and "error" not in results["devices"]:
        for n, v in results["devices"].items():
            if isinstance(v, dict):
                print(
                    f"{n} simulated CPU device(s), batch {results['devices']['batch_size']}: "
                    f"{v['seconds_per_epoch']:.3f} s/epoch, {v['examples_per_second']:.0f} examples/s, mesh {v['mesh']}"
                )
    if "startup" in results and "error" not in results["startup"]:
        s = results["startup"]
        torch_run = s.get("torch_eager")
        print(
            f"experiments.vae --epochs {s['epochs']} whole process: cold caches {s['cold_caches']['seconds']:.1f} s, "
            f"cold compilation cache {s['cold_compilation_cache']['seconds']:.1f} s, warm {s['warm_caches']['seconds']:.1f} s "
            f"(test neg-ELBO {s['warm_caches']['test_neg_elbo']:.2f}); experiments.torch_vae: "
            + (
                "n/a"
                if torch_run is None
                else f"{torch_run['seconds']:.1f} s (test neg-ELBO {torch_run['test_neg_elbo']:.2f})"
            )
        )
    if "commands" in results:
        print_commands(results["commands"])
    for name in ("devices", "startup"):
        if "error" in results.get(name, {}):
            print(f"{name}: failed ({results[name]['error']})")


if __name__ == "__main__":
    main()
