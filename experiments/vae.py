"""Train the MLP VAE (default 784-400-20 on MNIST) and write metrics, checkpoints and figures.

    python -m experiments.vae --epochs 30 --latent-dim 20 --workdir runs/vae
    python -m experiments.vae --seeds 8 --workdir runs/vae8        # 8 replicas in one run
    python -m experiments.vae --epochs 2 --workdir /tmp/vae-local  # smoke test

Outputs in the workdir: config.json, metrics.jsonl, summary.json (with the
collapse ``diagnostics``: mean KL per latent dimension, active units, I(x; z)),
checkpoints/ (Orbax) and reconstructions.png, samples.png,
interpolation.png, latent_space.png, loss_curves.png, kl_per_dim.png and, for
a 2-D latent, latent_manifold.png (from the first seed). The objective flags
(--likelihood, --beta, --beta-schedule, --free-bits, --iwae-k) are described in
``--help``. The result line goes to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vae_jax import diagnostics, linear_ae, runner, tasks
from vae_jax import workdir as workdir_lib
from vae_jax.checkpoint import CheckpointError
from vae_jax.cli import ConfigError, parse_config, user_errors
from vae_jax.data import DataError

MANIFOLD_SIDE = 15  # decodings per side of the latent-manifold grid
INTERPOLATION_CANDIDATES = 200  # test digits searched for informative interpolation endpoints


def latent_view(means: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    """2-D coordinates of posterior means: the means themselves, or their top-2 principal components."""
    if means.shape[1] == 1:
        return np.concatenate([means, np.zeros_like(means)], axis=1), ("z[0]", "(none)")
    if means.shape[1] == 2:
        return means, ("z[0]", "z[1]")
    # linear_ae.pca (an SVD, tested against scikit-learn) spares the run scikit-learn's slow import.
    fit = linear_ae.pca(means, 2)
    return (means - fit.mean) @ fit.components.T, ("PC 1 of posterior mean", "PC 2 of posterior mean")


def interpolation_endpoints(reconstructions: np.ndarray, labels: np.ndarray | None) -> tuple[int, int]:
    """Indices of the two images whose reconstructions differ most (Euclidean), of different classes if labelled.

    The first two test digits may decode alike (in a 2-D latent, say), which
    makes an interpolation between them show nothing; the pair the model
    tells apart most shows the path through its latent space.
    """
    flat = reconstructions.reshape(len(reconstructions), -1).astype(np.float64)
    squared = np.sum(flat**2, axis=1)
    distances = squared[:, None] + squared[None, :] - 2.0 * flat @ flat.T  # [N, N]
    if labels is not None:
        distances = np.where(labels[:, None] != labels[None, :], distances, -np.inf)
    a, b = np.unravel_index(np.argmax(distances), distances.shape)
    return int(a), int(b)


def manifold_grid(side: int) -> np.ndarray:
    """z values of the manifold figure: ``side`` quantiles of N(0, 1) from 5% to 95%, ascending.

    Spacing the grid by the prior's quantiles (Kingma & Welling 2014, fig. 4)
    spends the tiles where the prior puts its mass.
    """
    from scipy.stats import norm

    return norm.ppf(np.linspace(0.05, 0.95, side))


def write_figures(config, model, result: runner.TrainResult) -> list[str]:
    from vae_jax import plots  # matplotlib: imported only once there is something to draw

    params = result.params(0)
    data = result.dataset
    workdir = config.workdir
    x_test = data.x_test
    paths = []
    recon = tasks.reconstruct(model, params, x_test[:10])
    paths.append(
        plots.save_reconstructions(
            x_test[:10],
            recon,
            os.path.join(workdir, "reconstructions.png"),
            f"Test digits and their reconstructions (seed {result.seeds[0]})",
        )
    )
    samples = tasks.sample_prior(model, params, jax.random.key(config.seed), 50)
    paths.append(plots.save_grid(samples, os.path.join(workdir, "samples.png"), "Decoded samples z ~ N(0, I)"))
    candidates = x_test[:INTERPOLATION_CANDIDATES]
    labels = None if data.y_test is None else data.y_test[:INTERPOLATION_CANDIDATES]
    a, b = interpolation_endpoints(tasks.reconstruct(model, params, candidates), labels)
    strip = tasks.interpolate(model, params, x_test[a], x_test[b], steps=10)
    names = "" if labels is None else f" (a {labels[a]} and a {labels[b]})"
    paths.append(
        plots.save_image_rows(
            [np.stack([x_test[a], x_test[b]]), strip],
            ["endpoints", "z path"],
            os.path.join(workdir, "interpolation.png"),
            f"Decodings along the line between the posterior means of two test digits{names}",
        )
    )
    means = tasks.encode_means(model, params, x_test)
    coords, axis_labels = latent_view(means)
    paths.append(
        plots.save_latent_scatter(
            coords, data.y_test, os.path.join(workdir, "latent_space.png"), "Test posterior means", axis_labels
        )
    )
    if config.latent_dim == 2:
        z0 = manifold_grid(MANIFOLD_SIDE)
        z1 = z0[::-1]  # top row = highest z[1]
        plane = np.stack(np.meshgrid(z0, z1), axis=-1).reshape(-1, 2)
        paths.append(
            plots.save_latent_grid(
                tasks.decode_means(model, params, plane),
                z0,
                z1,
                os.path.join(workdir, "latent_manifold.png"),
                "Decodings E[x|z] over the latent plane (5%-95% quantiles of the prior)",
            )
        )
    paths.append(plots.save_loss_curves(result.history, workdir))
    result.summary["diagnostics"] = diagnostics.vae_collapse_diagnostics(
        model, params, x_test, jax.random.key(config.seed)
    )
    kl_per_dim = {"z": result.summary["diagnostics"]["mean_kl_per_dim"]}
    paths.append(plots.save_kl_per_dim(kl_per_dim, os.path.join(workdir, "kl_per_dim.png")))
    return paths


@user_errors(ConfigError, DataError, CheckpointError, runner.TrainingDiverged)
def main(argv=None) -> dict:
    """Runs the job; returns the summary (also in ``WORKDIR/summary.json``)."""
    config = parse_config(tasks.VAEConfig, argv, description=__doc__.split("\n\n")[0])
    return runner.train_and_report(config, tasks.vae_task, report)


def report(config, model, result: runner.TrainResult) -> dict:
    """Figures, ``summary.json`` and the result line (process 0 alone); returns the summary."""
    workdir_lib.write_summary(config.workdir, result.summary, write_figures(config, model, result))
    test = result.summary["test"]
    diag, epochs = result.summary["diagnostics"], result.summary["epochs"]
    print(
        f"test neg-ELBO {test['neg_elbo']['mean']:.2f} nats (recon {test['recon']['mean']:.2f}, "
        f"KL {test['kl']['mean']:.2f}) after {epochs} epoch{'s' * (epochs != 1)}; active units "
        f"{diag['active_units']}/{diag['latent_dim']}, I(x;z) {diag['mutual_information']:.2f} nats; "
        f"outputs in {config.workdir}"
    )
    return result.summary


if __name__ == "__main__":
    main()
