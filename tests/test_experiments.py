"""The main job and the evaluation job end to end, as a user runs them, and their one-line errors."""

import json
import os

import numpy as np
import pytest

from experiments import evaluate as evaluate_exp
from experiments import vae as vae_exp


def test_vae_then_evaluate(tmp_path, small_npz):
    workdir = str(tmp_path / "run")
    vae_exp.main(
        [
            "--dataset",
            small_npz,
            "--epochs",
            "3",
            "--hidden",
            "64",
            "--latent-dim",
            "4",
            "--batch-size",
            "64",
            "--seeds",
            "2",
            "--workdir",
            workdir,
            "--no-progress",
        ]
    )
    for name in [
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "reconstructions.png",
        "samples.png",
        "interpolation.png",
        "latent_space.png",
        "loss_curves.png",
    ]:
        assert os.path.isfile(os.path.join(workdir, name)), name
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert {"train_loss", "test_neg_elbo", "test_recon", "test_kl", "seconds"} <= set(lines[0])
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["dataset"]["source"] == small_npz and summary["dataset"]["n_train"] == 512
    assert summary["seeds"] == [0, 1] and len(summary["test"]["neg_elbo"]["per_seed"]) == 2

    out = str(tmp_path / "eval.json")
    result = evaluate_exp.main(["--workdir", workdir, "--iwae-k", "20", "--out", out])
    again = evaluate_exp.main(["--workdir", workdir, "--iwae-k", "20", "--out", out])
    assert result == again  # a fixed evaluation key
    assert json.load(open(out)) == json.loads(json.dumps(result))
    assert result["n"] == 128 and result["checkpoint_epoch"] == 3 and len(result["per_seed"]) == 2
    assert result["iwae_nll"] < result["neg_elbo"]
    # The evaluation's ELBO estimate agrees with the training run's last test evaluation.
    np.testing.assert_allclose(result["neg_elbo"], summary["test"]["neg_elbo"]["mean"], rtol=0.02)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--latent-dim", "0"], "--latent-dim must be a positive integer, got 0"),
        (["--hidden", "4,x"], "--hidden takes comma-separated integers"),
        (["--seeds", "x"], "--seeds must be a count N or a list like 0,3,7"),
        (["--likelihood", "poisson"], "--likelihood: invalid choice"),
        (["--dataset", "npz:/no/such.npz"], "--dataset npz:/no/such.npz: no such file"),
    ],
)
def test_bad_flags_give_one_line_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        vae_exp.main(argv + ["--workdir", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unwritable_workdir_is_a_one_line_error(tmp_path, capsys, small_npz):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the workdir should go")
    with pytest.raises(SystemExit) as exit_info:
        vae_exp.main(["--dataset", small_npz, "--epochs", "1", "--workdir", str(blocker / "run"), "--no-progress"])
    assert exit_info.value.code == 2
    assert "not a writable directory" in capsys.readouterr().err


def test_evaluate_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate_exp.main(["--workdir", str(tmp_path)])
    assert "no config.json here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_exp.main(["--workdir", str(tmp_path), "--iwae-k", "-1"])  # 0: no bound
    assert "--iwae-k must be a non-negative integer" in capsys.readouterr().err


def test_torch_reference_of_the_main_job(tmp_path, small_npz, capsys):
    """benchmarks.torch_vae (the benchmark's PyTorch yardstick): one-line flag errors; with torch, a run's outputs."""
    import importlib.util

    from benchmarks import torch_vae

    for argv, expected in [
        (["--epochs", "0"], "--epochs and --batch-size must be positive"),
        (["--dataset", "npz:/no/such.npz"], "npz:/no/such.npz"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            torch_vae.main(argv + ["--workdir", str(tmp_path / "bad")])
        assert exit_info.value.code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ") and (expected in line or "needs PyTorch" in line), line
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (pip install torch)")
    summary = torch_vae.main(
        ["--dataset", small_npz, "--epochs", "2", "--batch-size", "64", "--workdir", str(tmp_path / "run")]
    )
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2.pt"]
    for name in ("reconstructions.png", "samples.png", "loss_curves.png", "summary.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    # 512 gray-level digits, two epochs: well below the untrained model's ~545 nats (784 log 2), above 0
    assert 0 < summary["test_neg_elbo"] < 400


def test_latent_view_is_scikit_learns_pca_up_to_the_sign_of_each_component():
    from sklearn.decomposition import PCA

    means = np.random.default_rng(0).normal(size=(300, 6)) * np.array([3.0, 2.0, 1.0, 0.5, 0.2, 0.1])
    coords, labels = vae_exp.latent_view(means)
    reference = PCA(n_components=2).fit_transform(means)
    signs = np.sign(np.sum(coords * reference, axis=0))
    np.testing.assert_allclose(coords, reference * signs, atol=1e-9)
    assert labels[0].startswith("PC 1")
    two_d = means[:, :2]
    np.testing.assert_array_equal(vae_exp.latent_view(two_d)[0], two_d)  # 2-D latents are drawn as they are


def test_distributed_starts_jax_distributed_as_soon_as_the_flags_are_parsed(monkeypatch):
    """Experiments build models and data (touching JAX) before they train, and jax.distributed must start before
    anything touches JAX: parsing --distributed starts it (the VQ-VAE experiment failed before this)."""
    from vae_jax import cli, distributed, tasks

    calls = []
    monkeypatch.setattr(distributed, "initialize", lambda: calls.append("initialize"))
    cli.parse_config(tasks.VAEConfig, [])
    assert calls == []
    config = cli.parse_config(tasks.VAEConfig, ["--distributed"])
    assert config.distributed and calls == ["initialize"]


def test_the_peer_timeout_comes_from_the_environment_and_a_bad_value_is_one_line(monkeypatch):
    from vae_jax import distributed
    from vae_jax.errors import ConfigError

    monkeypatch.delenv("VAE_JAX_PEER_TIMEOUT_S", raising=False)
    assert distributed.peer_timeout_s() == distributed.PEER_TIMEOUT_S == 60.0
    monkeypatch.setenv("VAE_JAX_PEER_TIMEOUT_S", " 7.5 ")
    assert distributed.peer_timeout_s() == 7.5
    for bad in ("soon", "0", "2", "-5", "inf", "nan"):  # at least two missed heartbeats, and a finite wait
        monkeypatch.setenv("VAE_JAX_PEER_TIMEOUT_S", bad)
        with pytest.raises(
            ConfigError, match=rf"^VAE_JAX_PEER_TIMEOUT_S must be a number of seconds above 2 .*got '{bad}'$"
        ):
            distributed.peer_timeout_s()


def test_initialize_hands_the_peer_timeout_to_jax_heartbeat_rounded_up(monkeypatch):
    """A process silent for VAE_JAX_PEER_TIMEOUT_S is found by JAX's own heartbeat (whole seconds)."""
    import jax

    from vae_jax import distributed

    calls, updates = [], []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(jax.config, "update", lambda name, value: updates.append((name, value)))
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    monkeypatch.setenv("VAE_JAX_PEER_TIMEOUT_S", "7.5")
    distributed.initialize()
    assert calls == [{"num_processes": 2, "process_id": 1, "heartbeat_timeout_seconds": 8}]
    assert updates == [("jax_cpu_collectives_implementation", "gloo")]


def test_a_single_process_agrees_with_itself_on_a_stop_without_a_collective():
    import signal

    from vae_jax import distributed

    assert distributed.agreed_stop(None) is None
    assert distributed.agreed_stop(signal.SIGTERM) == signal.SIGTERM
    distributed.wait_for_all("nothing to wait for")  # one process: returns at once, without a coordinator
