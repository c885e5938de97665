"""The same MLP AE and VAE trained at several latent sizes: test reconstruction and neg-ELBO per size.

    python -m experiments.latent_sweep --latent-sizes 1,2,10,20,50,100 --epochs 30 --workdir runs/latent_sweep
    python -m experiments.latent_sweep --latent-sizes 2,20 --epochs 2 --workdir /tmp/sweep-local  # smoke test

Both models have the same widths (``--hidden``) and Bernoulli reconstruction loss; the VAE adds the KL
term. Each trains through the shared runner in its own sub-workdir (``ae_z{D}``, ``vae_z{D}``; re-running
resumes). Both reconstructions decode the deterministic code (the AE's z, the VAE's posterior mean).
Outputs: config.json, summary.json (a ``table`` with one row per latent size), latent_sweep.png.
"""

from __future__ import annotations

import dataclasses
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vae_jax import distributed, evaluate, latent_metrics, plots, runner  # noqa: E402
from vae_jax import workdir as workdir_lib  # noqa: E402
from vae_jax.cli import parse_config, user_errors  # noqa: E402
from vae_jax.errors import (
    field,
    require_list,
)


@dataclasses.dataclass(frozen=True)
class LatentSweepConfig(latent_metrics.AEVAEConfig):
    latent_sizes: tuple[int, ...] = field((1, 2, 10, 20, 50, 100), "latent sizes to train both models at")
    workdir: str = field("runs/latent_sweep", "output directory; one sub-workdir per model and size")

    def validate(self) -> None:
        super().validate()
        require_list(
            "latent_sizes", self.latent_sizes, lambda d: d > 0, "comma-separated positive sizes like 1,2,10,20"
        )


def train_and_measure(kind: str, config, dataset) -> dict:
    """Trains one model (resuming its sub-workdir) and returns its row entries, mean/std over seeds."""
    model, task = latent_metrics.build_task(kind, config, dataset.image_shape)
    result = runner.train(config, task, dataset)
    params = [result.params(i) for i in range(len(result.seeds))]
    per_seed = [latent_metrics.deterministic_reconstruction(kind, model, p, dataset.x_test) for p in params]
    row = {f"test_{name}": runner.mean_std([np.mean(m[name]) for m in per_seed]) for name in ("bce", "mse")}
    if kind == "vae":
        row.update({f"test_{name}": result.summary["test"][name] for name in ("neg_elbo", "recon", "kl")})
        codes = [latent_metrics.encode(kind, model, p, dataset.x_test) for p in params]
        row["active_units"] = runner.mean_std([evaluate.active_units(c)[0] for c in codes])
    row["train_seconds"] = result.summary["train_seconds"]
    return row


def save_sweep_plot(table: list[dict], path: str) -> str:
    sizes = [row["latent_dim"] for row in table]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    mean = lambda kind, key: [row[kind][key]["mean"] for row in table]  # noqa: E731
    axes[0].plot(sizes, mean("ae", "test_bce"), "o-", label="AE reconstruction BCE")
    axes[0].plot(sizes, mean("vae", "test_bce"), "s-", label="VAE reconstruction BCE (z = posterior mean)")
    axes[0].plot(sizes, mean("vae", "test_neg_elbo"), "^--", label="VAE neg-ELBO")
    axes[0].set_ylabel("nats per test image")
    axes[1].plot(sizes, mean("ae", "test_mse"), "o-", label="AE")
    axes[1].plot(sizes, mean("vae", "test_mse"), "s-", label="VAE (z = posterior mean)")
    axes[1].set_ylabel("test MSE per pixel")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.set_xlabel("latent size D")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Same MLP autoencoder with and without the KL term, by latent size", fontsize=10)
    fig.tight_layout()
    return plots.save_figure(fig, path)


@user_errors()
def main(argv=None) -> dict:
    config = parse_config(LatentSweepConfig, argv, description=__doc__.split("\n\n")[0])
    for latent_dim in config.latent_sizes:  # every sub-workdir is checked before any data is loaded
        for sub_config in latent_metrics.matched_configs(config, latent_dim, config.workdir).values():
            workdir_lib.check_workdir(sub_config)
    dataset = runner.load_data(config)
    os.makedirs(config.workdir, exist_ok=True)
    workdir_lib.write_json(os.path.join(config.workdir, "config.json"), dataclasses.asdict(config))
    table = []
    for latent_dim in config.latent_sizes:
        configs = latent_metrics.matched_configs(config, latent_dim, config.workdir)
        row = {"latent_dim": latent_dim, **{kind: train_and_measure(kind, configs[kind], dataset) for kind in configs}}
        table.append(row)
        distributed.log(row_line(row))  # progress: the table is printed at the end
    return runner.report_on_main(config.workdir, lambda: report(config, dataset, table))


def row_line(row: dict) -> str:
    return (
        f"D={row['latent_dim']:4d}  AE bce {row['ae']['test_bce']['mean']:8.2f} mse "
        f"{row['ae']['test_mse']['mean']:.4f}  VAE bce {row['vae']['test_bce']['mean']:8.2f} mse "
        f"{row['vae']['test_mse']['mean']:.4f} neg-ELBO {row['vae']['test_neg_elbo']['mean']:8.2f} (KL "
        f"{row['vae']['test_kl']['mean']:.2f}, {row['vae']['active_units']['mean']:.0f} active units)"
    )


def report(config: LatentSweepConfig, dataset, table: list[dict]) -> dict:
    """The figure, ``summary.json`` and the table (process 0 alone); returns the summary."""
    figure = save_sweep_plot(table, os.path.join(config.workdir, "latent_sweep.png"))
    summary = {
        "seeds": config.seed_list(),
        "epochs": config.epochs,
        "dataset": dataset.summary(),
        "metric_notes": {
            "test_bce": "Bernoulli NLL (nats, summed over pixels) of decoding the deterministic code; mean over test images",
            "test_mse": "per-pixel MSE of the same decoding",
            "test_neg_elbo": "VAE only: recon + KL with one z sample per image",
            "active_units": "VAE only: latent dims whose posterior mean varies over the test set (Var > 0.01)",
        },
        "table": table,
        "figures": [os.path.basename(figure)],
        "sub_workdirs": sorted(d for d in os.listdir(config.workdir) if os.path.isdir(os.path.join(config.workdir, d))),
    }
    workdir_lib.write_summary(config.workdir, summary)
    distributed.log(f"data: {dataset.describe()}")
    print("\n".join(row_line(row) for row in table))
    print(f"outputs in {config.workdir}")
    return summary


if __name__ == "__main__":
    main()
