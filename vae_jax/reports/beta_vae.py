"""The table, traversals and KL figure of a sweep of the MLP VAE over beta, its schedule and free bits
(``experiments.beta_vae``)."""

from __future__ import annotations

import os

import jax
import numpy as np

from vae_jax import diagnostics, distributed, latent_views, plots, runner
from vae_jax import workdir as workdir_lib
from vae_jax.tasks import vae as vae_tasks

TRAVERSAL_VALUES = np.linspace(-3.0, 3.0, 9)
DIAGNOSTIC_COLUMNS = ("active_units", "latent_dim", "mutual_information", "collapsed_dims", "mean_kl_per_dim")


def measure_setting(
    setting: vae_tasks.VAEConfig, model, result: runner.TrainResult, dataset, traversal_dims: int
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
        **{k: diag[k] for k in DIAGNOSTIC_COLUMNS},
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


def report(config, dataset, trained: list) -> dict:
    """Each setting's row and traversals, the KL figure, ``summary.json`` and the table (process 0 alone).

    ``trained`` holds ``(setting, model, TrainResult)`` of every setting. Returns the summary.
    """
    measured = [
        measure_setting(setting, model, result, dataset, config.traversal_dims) for setting, model, result in trained
    ]
    rows, figures = [row for row, _ in measured], [figure for _, figure in measured]
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
    distributed.log(f"data: {dataset.describe()}")
    print(format_table(rows))
    print(f"outputs in {config.workdir}")
    return summary
