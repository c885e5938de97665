"""Train the MLP VAE (default 784-400-20 on MNIST) and write metrics, checkpoints and figures.

    python -m experiments.vae --epochs 30 --latent-dim 20 --workdir runs/vae
    python -m experiments.vae --seeds 8 --workdir runs/vae8        # 8 replicas in one run
    python -m experiments.vae --epochs 2 --workdir /tmp/vae-local  # smoke test

Outputs in the workdir: config.json, metrics.jsonl, summary.json (with the collapse ``diagnostics``),
checkpoints/ and the figures of the first seed, listed in docs/experiments/vae.md. The objective flags
are described in ``--help``. The result line goes to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vae_jax import diagnostics, linear_ae, runner, tasks
from vae_jax import workdir as workdir_lib
from vae_jax.cli import parse_config, user_errors

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

    params, data, x_test = result.params(0), result.dataset, result.dataset.x_test
    path = lambda name: os.path.join(config.workdir, name)  # noqa: E731
    recon = tasks.reconstruct(model, params, x_test[:10])
    title = f"Test digits and their reconstructions (seed {result.seeds[0]})"
    paths = [plots.save_reconstructions(x_test[:10], recon, path("reconstructions.png"), title)]
    samples = tasks.sample_prior(model, params, jax.random.key(config.seed), 50)
    paths.append(plots.save_grid(samples, path("samples.png"), "Decoded samples z ~ N(0, I)"))
    candidates = x_test[:INTERPOLATION_CANDIDATES]
    labels = None if data.y_test is None else data.y_test[:INTERPOLATION_CANDIDATES]
    a, b = interpolation_endpoints(tasks.reconstruct(model, params, candidates), labels)
    rows = [np.stack([x_test[a], x_test[b]]), tasks.interpolate(model, params, x_test[a], x_test[b], steps=10)]
    names = "" if labels is None else f" (a {labels[a]} and a {labels[b]})"
    title = f"Decodings along the line between the posterior means of two test digits{names}"
    paths.append(plots.save_image_rows(rows, ["endpoints", "z path"], path("interpolation.png"), title))
    coords, axis_labels = latent_view(tasks.encode_means(model, params, x_test))
    title = "Test posterior means"
    paths.append(plots.save_latent_scatter(coords, data.y_test, path("latent_space.png"), title, axis_labels))
    if config.latent_dim == 2:
        z0 = manifold_grid(MANIFOLD_SIDE)
        z1 = z0[::-1]  # top row = highest z[1]
        images = tasks.decode_means(model, params, np.stack(np.meshgrid(z0, z1), axis=-1).reshape(-1, 2))
        title = "Decodings E[x|z] over the latent plane (5%-95% quantiles of the prior)"
        paths.append(plots.save_latent_grid(images, z0, z1, path("latent_manifold.png"), title))
    paths.append(plots.save_loss_curves(result.history, config.workdir))
    diag = diagnostics.vae_collapse_diagnostics(model, params, x_test, jax.random.key(config.seed))
    result.summary["diagnostics"] = diag
    paths.append(plots.save_kl_per_dim({"z": diag["mean_kl_per_dim"]}, path("kl_per_dim.png")))
    return paths


@user_errors()
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
