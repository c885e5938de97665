"""Timing machinery: epochs that continue one training, interleaved repeats and their medians, the machine."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.torch_variants import torch_available


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
    timed on a freshly built state each time runs slower: new buffers are touched for the first time.)
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


def medians(timers: dict, repeats: int) -> dict:
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
