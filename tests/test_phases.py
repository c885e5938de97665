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
    before = phases.seconds()
    start = time.time()
    phases.enter("analyses")
    time.sleep(0.05)
    with phases.phase("figures"):
        time.sleep(0.03)
    time.sleep(0.02)
    after = phases.seconds()
    waited = time.time() - start
    grown = {name: after[name] - before.get(name, 0.0) for name in after}
    # Every second between the readings is in exactly one phase: the growth equals an outside clock's.
    assert abs(sum(grown.values()) - waited) < 5e-3
    assert grown["analyses"] >= 0.07 - 5e-3 and grown["figures"] >= 0.03 - 5e-3
    assert phases.line().startswith("phases: startup ")


def test_compilation_is_pulled_out_of_the_phase_it_happened_in():
    before = phases.seconds()
    phases.enter("training")
    start = time.time()
    fresh = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() + 17.25)  # a program no other test compiled
    fresh(jnp.ones((37, 29))).block_until_ready()
    waited = time.time() - start
    after = phases.seconds()
    compiled = after["compilation"] - before.get("compilation", 0.0)
    assert 0.0 < compiled <= waited
    assert after["training"] - before.get("training", 0.0) <= waited - compiled + 5e-3


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
    assert float(parts["analyses"]) + float(parts["figures"]) - 0.1 <= after <= total - float(parts["training"])
    # The benchmark's commands section reads the same line back.
    read = processes._phases_line(proc.stderr)
    assert read == {name: float(value) for name, value in parts.items()} | {"after_training": after}
    # Printed later, to 0.1 s (at most 0.05 s below), than recorded to 0.01 s (at most 0.005 s above).
    assert all(read[name] >= recorded[name] - 0.055 - 1e-9 for name in recorded)


def test_after_training_counts_every_second_once_the_analyses_began():
    phases.enter("analyses")
    first = phases.after_training()
    start = time.time()
    time.sleep(0.03)
    phases.enter("training")  # another phase (a second model, say): the clock after training runs on
    with phases.phase("figures"):
        time.sleep(0.02)
    grown = phases.after_training() - first
    assert abs(grown - (time.time() - start)) < 5e-3
