"""The sections that time whole processes: startup (cold and warm caches) and commands (each experiment)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.torch_variants import torch_available


def startup_section(args, epochs: int = 10, rounds: int = 3) -> dict:
    """Whole-process seconds of ``experiments.vae --epochs N`` with cold and warm caches (a fresh cache directory),
    and of its PyTorch equivalent ``benchmarks.torch_vae`` when torch is importable.

    The runs alternate, ``rounds`` times (cold caches, cold compilation cache, warm caches, PyTorch, then again),
    so a slower or faster stretch of the machine falls on every variant alike; the median is reported.
    """
    runs = [("cold_caches", "experiments.vae"), ("cold_compilation_cache", "experiments.vae")]
    runs += [("warm_caches", "experiments.vae")] + (
        [("torch_eager", "benchmarks.torch_vae")] if torch_available() else []
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
    flags = [] if module == "benchmarks.torch_vae" else ["--no-progress", "--no-tensorboard", "--no-resume"]
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
    test = summary["test_neg_elbo"] if module == "benchmarks.torch_vae" else summary["test"]["neg_elbo"]["mean"]
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
    """The phases an experiment printed last on stderr (``phases: startup 1.2 s, ... (total 9.9 s)``), with
    ``after_training`` when the line gives it."""
    lines = [line for line in stderr.splitlines() if line.startswith("phases: ")]
    if not lines:
        return {}
    read = {name: float(value) for name, value in re.findall(r"(\w+) ([\d.]+) s", lines[-1].split("(total")[0])}
    after = re.search(r"after training ([\d.]+) s\)", lines[-1])
    return read | ({"after_training": float(after.group(1))} if after else {})


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
