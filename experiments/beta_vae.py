"""A sweep of the MLP VAE over beta values, beta schedules and free bits, in one command.

    python -m experiments.beta_vae --betas 0.5,1,4,8 --epochs 20 --workdir runs/beta_vae
    python -m experiments.beta_vae --betas 1 --schedules constant,linear,cyclical --beta-warmup-steps 2000 \
        --beta-cycle-steps 1000 --free-bits-values 0,0.25 --workdir runs/beta_sched
    python -m experiments.beta_vae --betas 1,4 --epochs 2 --workdir /tmp/beta-local       # smoke test

Every combination of ``--betas`` x ``--schedules`` x ``--free-bits-values`` is
trained through the shared runner in its own sub-workdir (a complete
``experiments.vae`` run: config.json, metrics.jsonl, summary.json, checkpoints;
resumable). The sweep's workdir gets summary.json with a table of test
neg-ELBO, reconstruction, KL, active units and I(x; z) per setting (also
printed), kl_per_dim.png (one panel per setting) and traversals_<setting>.png
(decodings of one test image's posterior mean with each of its most
informative dimensions swept over [-3, 3]; Higgins et al. 2017).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import ClassVar

import jax
import numpy as np

from vae_jax import diagnostics, latent_views, plots, runner, schedules, tasks
from vae_jax import workdir as workdir_lib
from vae_jax.checkpoint import CheckpointError
from vae_jax.cli import ConfigError, field, parse_config, require, user_errors
from vae_jax.data import DataError

TRAVERSAL_VALUES = np.linspace(-3.0, 3.0, 9)


@dataclasses.dataclass(frozen=True)
class BetaVAESweepConfig(tasks.VAEConfig):
    """The MLP VAE's flags, with --beta, --beta-schedule and --free-bits replaced by the lists to sweep."""

    kind: ClassVar[str] = "beta_vae_sweep"
    workdir: str = field("runs/beta_vae", "sweep directory: one sub-workdir per setting, the table, figures")
    betas: tuple[float, ...] = field((1.0, 4.0), "beta values to sweep (the end value of a schedule)")
    schedules: tuple[str, ...] = field(("constant",), "beta schedules to sweep: constant, linear, cyclical")
    free_bits_values: tuple[float, ...] = field((0.0,), "free-bits floors (nats per dimension) to sweep")
    traversal_dims: int = field(8, "latent dimensions (the highest-KL ones) shown in each traversal figure")

    def validate(self) -> None:
        defaults = tasks.VAEConfig()
        for name, lists in (("beta", "betas"), ("beta_schedule", "schedules"), ("free_bits", "free_bits_values")):
            require(
                getattr(self, name) == getattr(defaults, name),
                name,
                f"left out in a sweep (use --{lists.replace('_', '-')})",
                getattr(self, name),
            )
        super().validate()
        require(
            len(self.betas) > 0 and all(np.isfinite(b) and b >= 0 for b in self.betas),
            "betas",
            "comma-separated non-negative numbers like 1,4",
            self.betas,
        )
        require(
            len(self.schedules) > 0 and set(self.schedules) <= set(schedules.SCHEDULES),
            "schedules",
            f"comma-separated names from {','.join(schedules.SCHEDULES)}",
            ",".join(self.schedules),
        )
        require(
            len(self.free_bits_values) > 0 and all(f >= 0 for f in self.free_bits_values),
            "free_bits_values",
            "comma-separated non-negative numbers like 0,0.5",
            self.free_bits_values,
        )
        require(self.traversal_dims > 0, "traversal_dims", "a positive integer", self.traversal_dims)
        for setting in self.settings():
            setting.validate()  # e.g. --schedules linear needs --beta-warmup-steps

    def settings(self) -> list[tasks.VAEConfig]:
        """One :class:`tasks.VAEConfig` per combination, each with its own sub-workdir."""
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(tasks.VAEConfig)}
        out = []
        for beta, schedule, free_bits in itertools.product(self.betas, self.schedules, self.free_bits_values):
            name = f"beta{beta:g}_{schedule}_fb{free_bits:g}"
            out.append(
                tasks.VAEConfig(
                    **{
                        **base,
                        "beta": beta,
                        "beta_schedule": schedule,
                        "free_bits": free_bits,
                        "workdir": os.path.join(self.workdir, name),
                    }
                )
            )
        return out


def train_setting(setting: tasks.VAEConfig, dataset) -> tuple:
    model, task = tasks.vae_task(setting, dataset.image_shape)
    return model, runner.train(setting, task, dataset)


def measure_setting(
    setting: tasks.VAEConfig, model, result: runner.TrainResult, dataset, traversal_dims: int
) -> tuple[dict, str]:
    """The setting's table row and traversal figure; writes its ``summary.json`` (process 0)."""
    params = result.params(0)
    diag = diagnostics.vae_collapse_diagnostics(model, params, dataset.x_test, jax.random.key(setting.seed))
    result.summary["diagnostics"] = diag
    dims = np.argsort(diag["mean_kl_per_dim"])[::-1][:traversal_dims]
    strips = latent_views.latent_traversals(model, params, dataset.x_test[0], dims, TRAVERSAL_VALUES)
    name = os.path.basename(setting.workdir)
    figure = plots.save_image_rows(
        list(strips),
        [f"z[{d}] KL {diag['mean_kl_per_dim'][d]:.2f}" for d in dims],
        os.path.join(os.path.dirname(setting.workdir), f"traversals_{name}.png"),
        f"{name}: one dimension swept over -3..3 (others at the posterior mean)",
    )
    workdir_lib.write_summary(setting.workdir, result.summary)
    test = result.summary["test"]
    row = {
        "setting": name,
        "beta": setting.beta,
        "schedule": setting.beta_schedule,
        "free_bits": setting.free_bits,
        **{k: test[k]["mean"] for k in ("neg_elbo", "recon", "kl")},
        "active_units": diag["active_units"],
        "latent_dim": diag["latent_dim"],
        "mutual_information": diag["mutual_information"],
        "collapsed_dims": diag["collapsed_dims"],
        "mean_kl_per_dim": diag["mean_kl_per_dim"],
        "train_seconds": result.summary["train_seconds"],
    }
    return row, figure


def format_table(rows: list[dict]) -> str:
    lines = [f"{'setting':<28}{'neg-ELBO':>10}{'recon':>10}{'KL':>8}{'active':>8}{'I(x;z)':>8}"]
    for r in rows:
        lines.append(
            f"{r['setting']:<28}{r['neg_elbo']:>10.2f}{r['recon']:>10.2f}{r['kl']:>8.2f}"
            f"{r['active_units']:>4}/{r['latent_dim']:<3}{r['mutual_information']:>8.2f}"
        )
    return "\n".join(lines)


@user_errors(ConfigError, DataError, CheckpointError, runner.TrainingDiverged)
def main(argv=None) -> dict:
    config = parse_config(BetaVAESweepConfig, argv, description=__doc__.split("\n\n")[0])
    for setting in config.settings():  # every sub-workdir is checked before any data is loaded
        workdir_lib.check_workdir(setting)
    dataset = runner.load_data(config)
    trained = [(setting, *train_setting(setting, dataset)) for setting in config.settings()]
    return runner.report_on_main(config.workdir, lambda: report(config, dataset, trained))


def report(config: BetaVAESweepConfig, dataset, trained: list) -> dict:
    """Each setting's row and traversals, the KL figure, ``summary.json`` and the table (process 0 alone).

    ``trained`` holds ``(setting, model, TrainResult)`` of every setting. Returns the summary.
    """
    rows, figures = [], []
    for setting, model, result in trained:
        row, figure = measure_setting(setting, model, result, dataset, config.traversal_dims)
        rows.append(row)
        figures.append(figure)
    figures.append(
        plots.save_kl_per_dim(
            {r["setting"]: r["mean_kl_per_dim"] for r in rows},
            os.path.join(config.workdir, "kl_per_dim.png"),
            "Mean test KL per latent dimension, per setting",
        )
    )
    summary = {
        "kind": config.kind,
        "dataset": dataset.summary(),
        "epochs": config.epochs,
        "seed": config.seed,
        "table": rows,
    }
    workdir_lib.write_summary(config.workdir, summary, figures)
    runner.log(f"data: {dataset.describe()}")
    print(format_table(rows))
    print(f"outputs in {config.workdir}")
    return summary


if __name__ == "__main__":
    main()
