"""The sections that time epochs in this process: epoch, seeds, conv, target and devices (a subprocess)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.epoch import JaxVariants, RunnerPath
from benchmarks.timing import medians, model_flops_per_example
from benchmarks.torch_variants import TorchConvVariant, TorchVariant, torch_available
from vae_jax import evaluate, parallel, tasks


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
        row = medians(timers, repeats)
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
    """N seeds in one run (one vmapped program) against N x the one-seed program, per batch size and N."""
    results = {}
    for batch_size in batch_sizes:
        counts = [n for n in seed_counts if n > 1]
        timers = {"1": RunnerPath(x, tasks.VAEConfig(batch_size=batch_size)).time_epoch}
        for n in counts:
            timers[str(n)] = RunnerPath(x, tasks.VAEConfig(batch_size=batch_size, seeds=str(n))).time_epoch
        timed = medians(timers, repeats)
        single = timed["1"]["seconds_per_epoch"]
        row = {"one_seed": timed["1"]}
        for n in counts:
            entry = {"vmap": timed[str(n)], "n_single_runs_seconds": n * single}
            entry["vmap"]["speedup_over_n_single_runs"] = n * single / entry["vmap"]["seconds_per_epoch"]
            row[str(n)] = entry
            print(
                f"seeds, batch {batch_size}, N={n}: vmap {entry['vmap']['seconds_per_epoch']:.3f}s, "
                f"N x one seed {n * single:.3f}s",
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
    row = medians(timers, repeats)
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
    timed = medians({n: p.time_epoch for n, p in paths.items()}, repeats)
    for n, p in paths.items():
        timed[n]["mesh"] = p.plan.summary()["mesh"]
        timed[n]["examples_per_second"] = (len(x) // batch_size) * batch_size / timed[n]["seconds_per_epoch"]
    return timed


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
