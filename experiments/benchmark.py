"""Time the default MLP VAE's training epoch: per-step jit loop vs scan-fused epoch vs PyTorch eager.

    python -m experiments.benchmark                       # batch 16, 128, 512; 1 and 8 seeds
    python -m experiments.benchmark --repeats 5 --out runs/benchmark.json

All variants train the same model (784-400-20, Bernoulli decoder, Adam 1e-3)
on the same data for one epoch (N // batch steps). Each repeat times every
variant once, in turn, so machine noise hits all alike; the median over
repeats is reported. Achieved GFLOP/s counts the model's matrix multiplies
(forward, and twice that backward) and is set beside a plain float32
matrix-multiply rate measured in the same run. PyTorch is timed only when
``torch`` is importable (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import cli
from vae_jax import data as data_lib, tasks, train
from vae_jax.cli import user_errors


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


class JaxVariants:
    """Compiled epoch functions of one batch size, and a fresh state for each call."""

    def __init__(self, x: np.ndarray, batch_size: int):
        config = tasks.VAEConfig(batch_size=batch_size)
        _, self.task = tasks.vae_task(config, x.shape[1:])
        self.optimizer = optax.adam(config.learning_rate)
        self.batch_size = batch_size
        self.data = {"x": jnp.asarray(x)}
        step = train.make_train_step(self.task.loss_fn, self.optimizer)
        self.jit_step = step
        self.fused = jax.jit(train.make_epoch_fn(step, batch_size), donate_argnums=0)
        self.replicated = train.make_replicated_epoch_fn(step, batch_size)

    def state(self, seeds):
        keys = jax.vmap(train.run_keys)(jnp.asarray(seeds))
        return train.init_replicated_state(self.task.init_params, self.optimizer, keys.init), keys

    def single(self):
        keys = train.run_keys(0)
        return train.init_train_state(self.task.init_params(keys.init), self.optimizer), keys

    def time_loop(self) -> float:
        state, keys = self.single()
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        state, metrics = train.loop_epoch(self.jit_step, state, self.data, keys.data, keys.sample, 0, self.batch_size)
        jax.block_until_ready((state, metrics))
        return time.perf_counter() - t0

    def time_fused(self) -> float:
        state, keys = self.single()
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        out = self.fused(state, self.data, keys.data, keys.sample, jnp.int32(0))
        jax.block_until_ready(out)
        return time.perf_counter() - t0

    def time_seeds(self, n: int) -> float:
        state, keys = self.state(list(range(n)))
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        out = self.replicated(state, self.data, keys.data, keys.sample, jnp.int32(0))
        jax.block_until_ready(out)
        return time.perf_counter() - t0


class TorchVariant:
    """The same VAE, loss, optimizer and batch in PyTorch, trained eagerly."""

    def __init__(self, x: np.ndarray, batch_size: int):
        import torch

        self.torch = torch
        torch.manual_seed(0)
        self.x = torch.from_numpy(x.reshape(len(x), -1).copy())
        self.batch_size = batch_size

    def time_epoch(self) -> float:
        torch = self.torch
        nn = torch.nn
        enc, mean_l, logvar_l = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        dec1, dec2 = nn.Linear(20, 400), nn.Linear(400, 784)
        params = [p for m in (enc, mean_l, logvar_l, dec1, dec2) for p in m.parameters()]
        opt = torch.optim.Adam(params, lr=1e-3)
        perm = torch.randperm(len(self.x))
        steps = len(self.x) // self.batch_size
        t0 = time.perf_counter()
        for i in range(steps):
            xb = self.x[perm[i * self.batch_size:(i + 1) * self.batch_size]]
            h = torch.relu(enc(xb))
            mean, logvar = mean_l(h), logvar_l(h)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            logits = dec2(torch.relu(dec1(z)))
            recon = nn.functional.binary_cross_entropy_with_logits(logits, xb, reduction="sum")
            kl = 0.5 * torch.sum(torch.exp(logvar) + mean**2 - 1.0 - logvar)
            loss = (recon + kl) / self.batch_size
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run(x: np.ndarray, batch_sizes, seeds_counts, repeats: int) -> dict:
    use_torch = torch_available()
    results = {"batch_sizes": {}, "seeds": {}}
    for batch_size in batch_sizes:
        jv = JaxVariants(x, batch_size)
        tv = TorchVariant(x, batch_size) if use_torch else None
        jv.time_loop(), jv.time_fused()  # compile
        if tv:
            tv.time_epoch()  # warm up
        times = {"jit_step_loop": [], "scan_fused_epoch": [], "torch_eager": []}
        for _ in range(repeats):  # interleaved
            times["jit_step_loop"].append(jv.time_loop())
            times["scan_fused_epoch"].append(jv.time_fused())
            if tv:
                times["torch_eager"].append(tv.time_epoch())
        steps = len(x) // batch_size
        flops = model_flops_per_example() * steps * batch_size
        row = {"steps_per_epoch": steps}
        for name, ts in times.items():
            if ts:
                med = statistics.median(ts)
                row[name] = {"seconds_per_epoch": med, "gflops": flops / med / 1e9, "all_seconds": ts}
        if tv:
            row["fused_speedup_over_torch"] = row["torch_eager"]["seconds_per_epoch"] / row["scan_fused_epoch"]["seconds_per_epoch"]
        row["fused_speedup_over_loop"] = row["jit_step_loop"]["seconds_per_epoch"] / row["scan_fused_epoch"]["seconds_per_epoch"]
        results["batch_sizes"][str(batch_size)] = row
        print(f"batch {batch_size}: " + ", ".join(f"{k} {v['seconds_per_epoch']:.3f}s" for k, v in row.items() if isinstance(v, dict)),
              file=sys.stderr)

    jv = JaxVariants(x, 128)
    for n in seeds_counts:
        jv.time_seeds(n)  # compile
    seed_times = {n: [] for n in seeds_counts}
    for _ in range(repeats):
        for n in seeds_counts:
            seed_times[n].append(jv.time_seeds(n))
    for n, ts in seed_times.items():
        results["seeds"][str(n)] = {"seconds_per_epoch": statistics.median(ts), "all_seconds": ts}
    if 1 in seed_times and len(seeds_counts) > 1:
        one = results["seeds"]["1"]["seconds_per_epoch"]
        for n in seeds_counts:
            if n > 1:
                results["seeds"][str(n)]["vs_n_single_runs"] = (n * one) / results["seeds"][str(n)]["seconds_per_epoch"]
    return results


@user_errors(data_lib.DataError)
def main(argv=None) -> dict:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="mnist", help="dataset spec (28x28x1 images)")
    parser.add_argument("--batch-sizes", default="16,128,512", help="comma-separated batch sizes")
    parser.add_argument("--seeds", default="1,8", help="comma-separated replica counts for the vmapped run (batch 128)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per variant (median reported)")
    parser.add_argument("--out", default="runs/benchmark.json", help="output JSON file")
    args = parser.parse_args(argv)
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        seeds_counts = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error("--batch-sizes and --seeds take comma-separated positive integers")
    if min(batch_sizes + seeds_counts) <= 0 or args.repeats <= 0:
        parser.error("--batch-sizes, --seeds and --repeats must be positive")
    dataset = data_lib.load_dataset(args.dataset, batch_size=max(batch_sizes))
    if dataset.image_shape != (28, 28, 1):
        parser.error(f"--dataset must have 28x28x1 images for the 784-400-20 model, got {dataset.image_shape}")
    results = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "jax": jax.__version__, "device": str(jax.devices()[0])},
        "dataset": dataset.summary(),
        "matmul_gflops": matmul_gflops(),
        "model_flops_per_example": model_flops_per_example(),
        **run(dataset.x_train, batch_sizes, seeds_counts, args.repeats),
    }
    if torch_available():
        import torch

        results["machine"]["torch"] = torch.__version__
        results["machine"]["torch_threads"] = torch.get_num_threads()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    except OSError as err:
        parser.error(f"--out {args.out}: cannot write ({err.strerror or type(err).__name__})")
    print_table(results)
    return results


def print_table(results: dict) -> None:
    print(f"matrix multiply: {results['matmul_gflops']:.1f} GFLOP/s (float32, 1024x1024)")
    print("batch | jit loop s/epoch | fused s/epoch | torch s/epoch | fused/torch | fused GFLOP/s (% of matmul)")
    for bs, row in results["batch_sizes"].items():
        torch_s = row.get("torch_eager", {}).get("seconds_per_epoch")
        fused = row["scan_fused_epoch"]
        torch_text = "n/a" if torch_s is None else f"{torch_s:.3f}"
        ratio_text = "n/a" if torch_s is None else f"{row['fused_speedup_over_torch']:.2f}x"
        print(f"{bs:>5} | {row['jit_step_loop']['seconds_per_epoch']:.3f} | {fused['seconds_per_epoch']:.3f} | "
              f"{torch_text} | {ratio_text} | "
              f"{fused['gflops']:.1f} ({100 * fused['gflops'] / results['matmul_gflops']:.0f}%)")
    for n, row in results["seeds"].items():
        extra = f", {row['vs_n_single_runs']:.2f}x faster than {n} single runs" if "vs_n_single_runs" in row else ""
        print(f"{n} vmapped seed(s), batch 128: {row['seconds_per_epoch']:.3f} s/epoch{extra}")


if __name__ == "__main__":
    main()
