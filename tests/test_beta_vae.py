"""experiments.beta_vae: the sweep's settings, its one-line errors, and a tiny end-to-end sweep."""

import json
import os

import pytest

from experiments import beta_vae
from vae_jax.cli import parse_config


def test_settings_are_the_product_of_the_lists(tmp_path):
    config = parse_config(
        beta_vae.BetaVAESweepConfig,
        [
            "--betas",
            "0.5,4",
            "--schedules",
            "constant,cyclical",
            "--beta-cycle-steps",
            "100",
            "--free-bits-values",
            "0,0.25",
            "--workdir",
            str(tmp_path),
        ],
    )
    settings = config.settings()
    assert len(settings) == 8
    assert {(s.beta, s.beta_schedule, s.free_bits) for s in settings} == {
        (b, s, f) for b in (0.5, 4.0) for s in ("constant", "cyclical") for f in (0.0, 0.25)
    }
    assert len({s.workdir for s in settings}) == 8
    assert all(os.path.dirname(s.workdir) == str(tmp_path) and s.kind == "vae" for s in settings)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--beta", "4"], "--beta must be left out in a sweep (use --betas)"),
        (["--schedules", "constant,cosine"], "--schedules must be comma-separated names from constant,linear,cyclical"),
        (["--schedules", "linear"], "--beta-warmup-steps must be a positive number of steps"),
        (["--betas", "1,x"], "--betas takes comma-separated numbers"),
        (["--free-bits-values", "-1"], "--free-bits-values must be comma-separated non-negative numbers"),
    ],
)
def test_sweep_flag_errors_are_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        beta_vae.main(argv + ["--workdir", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_tiny_sweep_end_to_end(tmp_path, small_npz, capsys):
    workdir = str(tmp_path / "sweep")
    beta_vae.main(
        [
            "--dataset",
            small_npz,
            "--epochs",
            "1",
            "--hidden",
            "32",
            "--latent-dim",
            "3",
            "--batch-size",
            "128",
            "--betas",
            "1,8",
            "--traversal-dims",
            "2",
            "--workdir",
            workdir,
            "--no-progress",
        ]
    )
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    rows = {r["setting"]: r for r in summary["table"]}
    assert set(rows) == {"beta1_constant_fb0", "beta8_constant_fb0"}
    for name, row in rows.items():
        assert abs(row["neg_elbo"] - row["recon"] - row["kl"]) < 1e-3
        assert len(row["mean_kl_per_dim"]) == 3 and 0 <= row["active_units"] <= 3
        sub = json.load(open(os.path.join(workdir, name, "summary.json")))
        assert sub["diagnostics"]["active_units"] == row["active_units"]  # each setting is a complete run
        assert os.path.isfile(os.path.join(workdir, f"traversals_{name}.png"))
    assert rows["beta8_constant_fb0"]["kl"] < rows["beta1_constant_fb0"]["kl"]  # a heavier KL weight, less KL
    assert "kl_per_dim.png" in summary["figures"]
    out, err = capsys.readouterr()
    assert "beta8_constant_fb0" in out and "data: " in err  # the table on stdout, the logs on stderr
