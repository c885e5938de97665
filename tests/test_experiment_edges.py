"""The edges every training experiment shares: how a ``--distributed`` run ends in each process, where the
result lines go, flags refused before anything is read or written, and each experiment's own workdir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.test_distributed import _free_port
from vae_jax import workdir as workdir_lib

# Tiny settings of every training experiment (the digits slice of conftest's small_npz, 1 epoch).
TINY = {
    "vae": ["--hidden", "16", "--latent-dim", "2"],
    "cvae": ["--hidden", "16"],
    "hvae": [
        "--hidden",
        "16",
        "--top-hidden",
        "8",
        "--latent-dim",
        "4",
        "--top-latent-dim",
        "2",
        "--iwae-examples",
        "16",
    ],
    "conv_vae": [
        "--channels",
        "4,8",
        "--hidden",
        "16",
        "--latent-dim",
        "2",  # 2-D means are plotted as they are: no t-SNE (15 s of host time, process 0 alone)
        "--train-eval-examples",
        "64",
        "--mixture-components",
        "2",
        "--tsne-points",
        "60",
    ],
    "vqvae": [
        "--codebook-size",
        "16",
        "--code-dim",
        "4",
        "--channels",
        "8,16",
        "--res-blocks",
        "0",
        "--prior-epochs",
        "1",
        "--prior-channels",
        "8",
        "--prior-layers",
        "2",
        "--vae-epochs",
        "0",
        "--num-samples",
        "20",
    ],
    "autoencoder": ["--hidden", "16"],
    "beta_vae": ["--hidden", "16", "--latent-dim", "3", "--betas", "4", "--traversal-dims", "2"],
    "pca_vs_linear_ae": ["--components", "4"],
    "latent_sweep": ["--latent-sizes", "2", "--hidden", "16"],
    "latent_space": ["--hidden", "16", "--tsne-latent-dim", "0", "--num-samples", "40", "--grid-size", "4"],
}
COMMON = ["--epochs", "1", "--batch-size", "64", "--no-progress", "--no-tensorboard"]
# Experiments the distributed run leaves out, because another one there takes the same way through a
# --distributed run (what both processes do before training, how they train, what process 0 alone reports).
SAME_PATH_AS = {
    # check_workdir, load_data, log, one runner.train, report_on_main: experiments.vae's main line by line
    "autoencoder": "vae",
    # check every matched_configs sub-workdir, load_data, write config.json, train the AE and the VAE of a
    # latent size into their sub-workdirs, report_on_main: latent_sweep does all that, and measures in every
    # process before its report (latent_space's process 0 alone encodes the test images and starts its t-SNEs
    # between the two pairs, on host-sliced params, as its report does; its TINY settings skip the t-SNE)
    "latent_space": "latent_sweep",
    # check every setting's sub-workdir before loading, train each into it (one setting here), report on top:
    # latent_sweep checks sub-workdirs before loading, and hvae trains two runs into sub-workdirs and reports on top
    "beta_vae": "hvae",
}

# Runs every experiment in turn in one process (one JAX start for all); markers split its stdout and stderr
# per experiment. Process 1 records every file it opens for writing in the workdirs (an audit hook).
RUN_ALL = textwrap.dedent("""
    import importlib, json, os, sys
    root, dataset, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    written = []
    if os.environ["JAX_PROCESS_ID"] == "1":
        def record(event, args):
            if event == "open" and isinstance(args[0], str) and args[0].startswith(root) and (
                    any(m in str(args[1]) for m in "wax+") or (isinstance(args[2], int) and args[2] & 0o3)):
                written.append(args[0])
        sys.addaudithook(record)
    for name, argv in names.items():
        for stream in (sys.stdout, sys.stderr):
            print(f"=== {name}", file=stream, flush=True)
        importlib.import_module("experiments." + name).main(
            ["--dataset", dataset, "--workdir", os.path.join(root, name), "--distributed", "--devices", "all", *argv])
    print("=== written", json.dumps(written), flush=True)
""")


def _sections(text: str) -> dict[str, str]:
    """``{name: text}`` of the parts of a log that start with a line ``=== name``."""
    sections, name = {}, None
    for line in text.splitlines(keepends=True):
        if line.startswith("=== "):
            name, rest = (line[4:].rstrip("\n").split(" ", 1) + [""])[:2]
            sections[name] = rest
        elif name is not None:
            sections[name] += line
    return sections


@pytest.mark.slow
def test_every_experiment_ends_cleanly_in_every_process_of_a_distributed_run(tmp_path, small_npz):
    """Two processes run every training experiment (but those of SAME_PATH_AS): both exit 0 without a traceback, process 0 prints the
    result lines on stdout (logs on stderr), process 1 prints one line per experiment naming process 0's
    workdir and writes none of the records (summary.json, figures: only checkpoints and hidden files)."""
    root = str(tmp_path / "runs")
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}",
        "JAX_NUM_PROCESSES": "2",
        # Clean ends, not liveness, are tested here: beside another test on two cores, these processes once
        # went 20 s without a heartbeat, so a silent peer is waited for longer than the default.
        "VAE_JAX_PEER_TIMEOUT_S": "180",
    }
    env["XLA_FLAGS"] = " ".join(
        f
        for f in env.get("XLA_FLAGS", "").split()  # one device per process
        if not f.startswith("--xla_force_host_platform_device_count")
    )
    names = {name: [*COMMON, *argv] for name, argv in TINY.items() if name not in SAME_PATH_AS}

    logs, procs = [], []
    for i in range(2):
        out, err = open(tmp_path / f"{i}.out", "w+"), open(tmp_path / f"{i}.err", "w+")
        logs.append((out, err))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RUN_ALL, root, small_npz, json.dumps(names)],
                env={**env, "JAX_PROCESS_ID": str(i)},
                stdout=out,
                stderr=err,
                text=True,
            )
        )
    deadline = time.monotonic() + 1200
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):  # one failed: the other would wait for it
            break
        time.sleep(0.5)
    results = []
    for proc, (out, err) in zip(procs, logs, strict=True):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        out.seek(0)
        err.seek(0)
        results.append((proc.returncode, out.read(), err.read()))
    for i, (code, _stdout, stderr) in enumerate(results):
        assert code == 0 and "Traceback" not in stderr, f"process {i}: exit {code}\n{stderr[-4000:]}"
    stdout0, stderr0 = _sections(results[0][1]), _sections(results[0][2])
    stdout1, stderr1 = _sections(results[1][1]), _sections(results[1][2])
    assert list(stdout0)[:-1] == list(names)  # every one ran, in turn
    for name in names:
        workdir = os.path.join(root, name)
        record = "comparison.json" if name == "hvae" else "summary.json"  # the HVAE's sub-runs hold summaries
        assert os.path.isfile(os.path.join(workdir, record)), name
        assert any(f.endswith(".png") for _, _, files in os.walk(workdir) for f in files), name
        assert workdir in stdout0[name], (name, stdout0[name])  # the result line names the outputs
        assert "data:" in stderr0[name], name  # logs on stderr
        # beside the result line, one stdout line names the data the run trained on (its data.json)
        data_lines = [line for line in stdout0[name].splitlines() if line.startswith("data: ")]
        assert len(data_lines) == 1 and data_lines[0].startswith(f"data: {small_npz} ("), (name, stdout0[name])
        lines = [
            line
            for line in (stdout1[name] + stderr1[name]).splitlines()
            if line.strip() and not line.startswith(("[Gloo]", "E1", "W1", "I1"))
        ]
        assert lines == [f"process 1: the results are written by process 0 in {workdir}"], (name, lines)
    records = [
        p
        for p in json.loads(stdout1["written"])
        if "/checkpoints/" not in p and not os.path.isdir(p) and not os.path.basename(p).startswith(".")
    ]  # Orbax's shards, write probes
    assert records == []


def _refused(capsys, module: str, argv: list[str]) -> str:
    """Runs ``experiments.<module>`` with ``argv``, expecting exit code 2; returns its one stderr line."""
    import importlib

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"experiments.{module}").main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert out == "" and line.startswith("error: "), (out, err)
    return line


def _listing(path) -> list[str] | None:
    return (
        None
        if not os.path.exists(path)
        else sorted(os.path.relpath(os.path.join(d, f), path) for d, dirs, files in os.walk(path) for f in dirs + files)
    )


@pytest.mark.parametrize(
    "module, flags, named",
    [
        ("vae", ["--epochs", "0"], "--epochs"),
        ("vqvae", ["--epochs", "0"], "--epochs"),
        ("vae", ["--devices", "4"], "--devices"),  # the tests' JAX has one device
        ("cvae", ["--seeds", "3", "--devices", "4"], "--devices"),
        ("conv_vae", ["--preset", "faces128", "--latent-dim", "3"], "--latent-dim"),
        ("hvae", ["--workdir", "FILE/run"], "--workdir"),
        ("beta_vae", ["--workdir", "FILE/run"], "--workdir"),
    ],
)
@pytest.mark.parametrize("workdir_state", ["absent", "holding a file"])
def test_flags_that_need_no_data_are_refused_before_data_loads_and_before_any_write(
    tmp_path, capsys, module, flags, named, workdir_state
):
    """Each error is one line naming its flag, exit code 2; the dataset (which does not exist) is never read
    (its error would come instead) and the workdir is left as it was: absent, or with the same files."""
    workdir = tmp_path / "run"
    if workdir_state == "holding a file":
        workdir.mkdir()
        (workdir / "notes.txt").write_text("mine")
    (tmp_path / "FILE").write_text("a file where a directory would go")
    flags = [str(tmp_path / "FILE" / "run") if f == "FILE/run" else f for f in flags]
    before = _listing(workdir)
    line = _refused(capsys, module, ["--dataset", "npz:/no/such/data.npz", "--workdir", str(workdir), *flags])
    assert line.startswith(f"error: {named}") or f" {named} " in line, line
    assert _listing(workdir) == before


@pytest.mark.parametrize(
    "module, argv",
    [
        ("conv_vae", []),
        ("pca_vs_linear_ae", []),
        ("beta_vae", ["--betas", "4"]),
        ("latent_sweep", ["--latent-sizes", "2"]),
    ],
)
def test_a_workdir_holding_a_run_with_other_settings_is_refused_before_data_loads(tmp_path, capsys, module, argv):
    """The experiment's (first) run, as a config.json and a checkpoint folder, trained with --seed 0 and
    continued with --seed 1: one line naming the setting, before the (missing) dataset is read; nothing in
    the workdir changes."""
    workdir = tmp_path / "run"
    config = _first_run_config(module, workdir, argv)
    os.makedirs(os.path.join(config.workdir, "checkpoints", "1"))
    with open(os.path.join(config.workdir, "config.json"), "w") as f:
        json.dump(workdir_lib.config_record(config), f)
    before = _listing(workdir)
    line = _refused(
        capsys,
        module,
        ["--dataset", "npz:/no/such/data.npz", "--workdir", str(workdir), "--epochs", "1", "--seed", "1", *argv],
    )
    assert f"--workdir {config.workdir} holds a run with other settings (--seed 0 there, 1 here)" in line, line
    assert _listing(workdir) == before


def _first_run_config(module: str, workdir, argv: list[str]):
    """The config of the first run ``experiments.<module>`` trains with ``argv``, ``--epochs 1 --seed 0``."""
    from experiments import beta_vae, latent_sweep
    from vae_jax import cli, latent_metrics, linear_ae
    from vae_jax.tasks.conv_vae import ConvVAEConfig

    classes = {
        "conv_vae": ConvVAEConfig,
        "pca_vs_linear_ae": linear_ae.LinearAEConfig,
        "beta_vae": beta_vae.BetaVAESweepConfig,
        "latent_sweep": latent_sweep.LatentSweepConfig,
    }
    config = cli.parse_config(
        classes[module],
        ["--dataset", "npz:/no/such/data.npz", "--workdir", str(workdir), "--epochs", "1", "--seed", "0", *argv],
    )
    if module == "beta_vae":
        return config.settings()[0]
    if module == "latent_sweep":
        return latent_metrics.matched_configs(config, 2, str(workdir))["ae"]
    return config


def test_distributed_without_a_coordinator_is_refused_before_anything_is_written(tmp_path):
    """--distributed without JAX_COORDINATOR_ADDRESS: one line naming --distributed, exit 2, no workdir (in a
    process of its own: jax.distributed can start once per process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")} | {"JAX_PLATFORMS": "cpu"}
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.vae",
            "--distributed",
            "--workdir",
            str(workdir),
            "--dataset",
            "npz:/no/such/data.npz",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and line.startswith("error: --distributed: jax.distributed.initialize() failed")
    assert proc.stdout == "" and not workdir.exists()


def test_a_workdir_inside_another_run_is_refused(tmp_path, capsys, small_npz):
    """A workdir in a run's checkpoints/ (or anywhere below a directory with a run's config.json) is refused
    with one line naming --workdir and that run; a run's own sub-runs (an HVAE's WORKDIR/hvae and WORKDIR/vae)
    and a workdir beside a run are used as before (tests/test_variant_experiments.py runs the HVAE's)."""
    run = tmp_path / "run"
    (run / "checkpoints" / "3").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"kind": "vae", "workdir": str(run), "epochs": 3}))
    for inside in (run / "checkpoints" / "new", run / "a" / "b"):
        line = _refused(capsys, "vae", ["--dataset", small_npz, "--workdir", str(inside), "--epochs", "1"])
        assert line.startswith(f"error: --workdir {inside} is inside the run in {run} "), line
        assert not inside.exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text('{"theme": "dark"}')  # not a run's config.json
    assert workdir_lib.enclosing_run(str(tmp_path / "notes" / "hvae")) is None
    assert workdir_lib.enclosing_run(str(tmp_path / "beside")) is None
    assert workdir_lib.enclosing_run(str(run / "checkpoints" / "new")) == str(run)


TRAINING_EXPERIMENTS = sorted(TINY)


def test_each_experiment_has_a_default_workdir_of_its_own(capsys):
    """No two experiments write into one default workdir (read from each command's --help)."""
    import importlib
    import re

    defaults = {}
    for module in TRAINING_EXPERIMENTS + ["evaluate"]:
        with pytest.raises(SystemExit):
            importlib.import_module(f"experiments.{module}").main(["--help"])
        option = re.search(r"\n  --workdir WORKDIR(.*?)(\n  -|$)", capsys.readouterr().out, re.S).group(1)
        match = re.search(r"\(default: (\S+)\)", " ".join(option.split()))
        if module == "evaluate":
            assert match is None  # it reads a run's workdir; it has no default
            continue
        defaults[module] = match.group(1)
    assert len(set(defaults.values())) == len(defaults), defaults
    assert defaults["vae"] == "runs/vae" and defaults["cvae"] == "runs/cvae" and defaults["hvae"] == "runs/hvae"


def test_a_wheel_takes_no_top_level_experiments_package():
    """The packages a wheel holds, found as setuptools finds them from pyproject.toml's configuration: the
    library and its subpackages, and no top-level ``experiments`` (nor ``tests``) that would shadow a project's
    own folder of that name."""
    import tomllib

    import setuptools

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        find = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]
    finder = setuptools.find_namespace_packages if find.get("namespaces", True) else setuptools.find_packages
    packages = finder(where=root, include=find.get("include", ["*"]), exclude=find.get("exclude", ()))
    assert {"vae_jax", "vae_jax.models", "vae_jax.tasks"} <= set(packages)
    assert sorted({p.split(".")[0] for p in packages}) == ["vae_jax"], packages


def test_a_report_is_reused_only_for_the_same_params_settings_and_figures(tmp_path):
    import numpy as np

    params, settings = {"dense": {"kernel": np.arange(6.0).reshape(2, 3)}}, {"epochs": 2, "hidden": [16]}
    fingerprint = workdir_lib.report_fingerprint(params, settings)
    changed_weight = {"dense": {"kernel": np.arange(6.0).reshape(2, 3) + np.eye(2, 3) * 1e-7}}
    assert workdir_lib.report_fingerprint(changed_weight, settings) != fingerprint
    assert workdir_lib.report_fingerprint(params, {**settings, "epochs": 3}) != fingerprint
    assert (
        workdir_lib.report_fingerprint({"dense": {"kernel": np.arange(6.0).reshape(2, 3)}}, dict(settings))
        == fingerprint
    )
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"report_fingerprint": fingerprint, "figures": ["a.png"]}))
    assert workdir_lib.reusable_report(str(path), fingerprint) is None  # a.png is missing
    (tmp_path / "a.png").write_bytes(b"")
    assert workdir_lib.reusable_report(str(path), fingerprint)["figures"] == ["a.png"]
    assert workdir_lib.reusable_report(str(path), workdir_lib.report_fingerprint(changed_weight, settings)) is None
    assert workdir_lib.reusable_report(str(tmp_path / "absent.json"), fingerprint) is None


def test_reuse_or_compute_computes_once_writes_the_fingerprint_and_recomputes_for_another(tmp_path, capsys):
    calls = []

    def compute(value):
        def fn():
            calls.append(value)
            (tmp_path / "a.png").write_bytes(b"png")
            return {"value": value}, [str(tmp_path / "a.png")]

        return fn

    path = str(tmp_path / "summary.json")
    first = workdir_lib.reuse_or_compute(path, "sha256:one", compute(1))
    stored = open(path, "rb").read()
    record = json.loads(stored)  # the figures by name, the fingerprint and the command's phases
    assert record["value"] == 1 and record["figures"] == ["a.png"] and record["report_fingerprint"] == "sha256:one"
    assert "phases" in record and first == record and calls == [1] and "reusing" not in capsys.readouterr().err
    # The same fingerprint: read back as stored, nothing computed or written, one log line on stderr.
    assert workdir_lib.reuse_or_compute(path, "sha256:one", compute(2)) == record and calls == [1]
    assert open(path, "rb").read() == stored and f"reusing {path}" in capsys.readouterr().err
    # Another fingerprint (a changed checkpoint or flag): computed and written again.
    assert workdir_lib.reuse_or_compute(path, "sha256:two", compute(3))["value"] == 3 and calls == [1, 3]
    assert json.load(open(path))["report_fingerprint"] == "sha256:two"
    # Any other file is written as it is, with the figures it lists.
    other = str(tmp_path / "comparison.json")
    report = workdir_lib.reuse_or_compute(other, "sha256:one", lambda: ({"figures": ["a.png"], "x": 0}, None))
    assert json.load(open(other)) == report == {"figures": ["a.png"], "x": 0, "report_fingerprint": "sha256:one"}
