"""Where a command's time goes: the phases add up to the time the process ran, measured from outside."""

import json
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks import processes
from vae_jax import phases


def test_the_phases_account_for_every_second_between_two_readings():
    # Two readings of an outside clock around each reading of the phases bracket the time between them, so the
    # test holds however long the machine pauses this process (a loaded CI machine can for many milliseconds).
    outer_start = time.time()
    before = phases.seconds()
    inner_start = time.time()
    phases.enter("analyses")
    time.sleep(0.05)
    with phases.phase("figures"):
        time.sleep(0.03)
    time.sleep(0.02)
    inner_end = time.time()
    after = phases.seconds()
    outer_end = time.time()
    grown = {name: after[name] - before.get(name, 0.0) for name in after}
    # Every second between the readings is in exactly one phase: the growth equals an outside clock's.
    assert inner_end - inner_start - 1e-6 <= sum(grown.values()) <= outer_end - outer_start + 1e-6
    assert grown["analyses"] >= 0.07 - 1e-3 and grown["figures"] >= 0.03 - 1e-3
    assert phases.line().startswith("phases: startup ")


def test_compilation_is_pulled_out_of_the_phase_it_happened_in():
    outer_start = time.time()
    before = phases.seconds()
    phases.enter("training")
    inner_start = time.time()
    fresh = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() + 17.25)  # a program no other test compiled
    fresh(jnp.ones((37, 29))).block_until_ready()
    inner_end = time.time()
    after = phases.seconds()
    outer_end = time.time()
    compiled = after["compilation"] - before.get("compilation", 0.0)
    assert 0.0 < compiled <= inner_end - inner_start
    assert after["training"] - before.get("training", 0.0) <= outer_end - outer_start - compiled + 1e-6


def test_programs_compiled_in_two_threads_at_once_count_no_more_compilation_than_passed():
    # Two threads compile at once: JAX reports both durations, which can add up to more than the wall time.
    import concurrent.futures

    def compile_one(offset: float) -> None:
        fresh = jax.jit(lambda x: jnp.sin(jnp.cos(x @ x.T) @ x).sum() + offset)  # programs no other test compiled
        fresh(jnp.ones((41, 23))).block_until_ready()

    outer_start = time.time()
    before = phases.seconds()
    phases.enter("analyses")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(compile_one, [3.5, 4.25, 5.125, 6.0625]))
    after = phases.seconds()
    outer_end = time.time()
    grown = {name: after[name] - before.get(name, 0.0) for name in after}
    assert all(value >= 0.0 for value in grown.values())
    assert 0.0 < grown["compilation"] and sum(grown.values()) <= outer_end - outer_start + 1e-6


def test_an_experiment_records_its_phases_adding_up_to_its_process_time(tmp_path, small_npz):
    workdir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")} | {"JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "experiments.vae", "--epochs", "1", "--dataset", small_npz]
    start = time.time()
    proc = subprocess.run([*command, "--workdir", str(workdir)], env=env, capture_output=True, text=True, timeout=600)
    outside = time.time() - start
    assert proc.returncode == 0, proc.stderr
    recorded = json.load(open(workdir / "summary.json"))["phases"]
    wanted = {"startup", "data", "compilation", "training", "evaluation", "analyses", "figures"}
    assert wanted <= set(recorded) and all(value >= 0 for value in recorded.values())
    # The summary is written near the end: its phases cover most of the process, never more than all of it.
    assert 0.6 * outside <= sum(recorded.values()) <= outside
    line = proc.stderr.strip().splitlines()[-1]
    parts = dict(re.findall(r"(\w+) ([\d.]+) s", line.split("(total")[0]))
    total, after = map(float, re.search(r"\(total ([\d.]+) s, after training ([\d.]+) s\)", line).groups())
    assert line.startswith("phases: ") and set(parts) == set(recorded)
    assert abs(sum(map(float, parts.values())) - total) <= 0.05 * len(parts) and total <= outside
    # After training: the analyses and figures, and every compilation they needed, never the training.
    # (Each printed to 0.1 s, so three roundings of at most 0.05 s apart.)
    assert float(parts["analyses"]) + float(parts["figures"]) - 0.15 - 1e-9 <= after <= total - float(parts["training"])
    # The benchmark's commands section reads the same line back.
    read = processes._phases_line(proc.stderr)
    assert read == {name: float(value) for name, value in parts.items()} | {"after_training": after}
    # Printed later, to 0.1 s (at most 0.05 s below), than recorded to 0.01 s (at most 0.005 s above).
    assert all(read[name] >= recorded[name] - 0.055 - 1e-9 for name in recorded)
    # The same command again trains nothing and leaves summary.json as it is, phases included.
    stored = (workdir / "summary.json").read_bytes()
    again = subprocess.run([*command, "--workdir", str(workdir)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to train" in again.stderr, again.stderr
    assert (workdir / "summary.json").read_bytes() == stored


def test_after_training_counts_every_second_once_the_analyses_began():
    outer_start = time.time()
    phases.enter("analyses")
    inner_start = time.time()
    first = phases.after_training()
    time.sleep(0.03)
    phases.enter("training")  # another phase (a second model, say): the clock after training runs on
    with phases.phase("figures"):
        time.sleep(0.02)
        inner_end = time.time()
    outer_end = time.time()
    grown = phases.after_training() - first
    assert inner_end - inner_start - 1e-6 <= grown <= outer_end - outer_start + 1e-6


def test_scikit_learn_is_imported_beside_training_only_when_a_run_has_epochs_to_train():
    """A fresh interpreter: plans with epochs to train start the import in a thread, and when it ends the
    analyses' estimators are loaded; plans with nothing to train import nothing (a rerun reuses its report)."""
    code = (
        "import sys, types\n"
        "from vae_jax import latent_metrics\n"
        "idle = types.SimpleNamespace(nothing_to_train=True)\n"
        "busy = types.SimpleNamespace(nothing_to_train=False)\n"
        "print(latent_metrics.import_sklearn_in_background([idle, idle]), 'sklearn' in sys.modules)\n"
        "thread = latent_metrics.import_sklearn_in_background([idle, busy])\n"
        "thread.join(60)\n"
        "print(thread.daemon, [m in sys.modules for m in latent_metrics.SKLEARN_MODULES])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["None False", "True [True, True, True]"]
