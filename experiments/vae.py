"""Train the MLP VAE (default 784-400-20 on MNIST) and write metrics, checkpoints and figures.

    python -m experiments.vae --epochs 30 --latent-dim 20 --workdir runs/vae
    python -m experiments.vae --seeds 8 --workdir runs/vae8        # 8 replicas in one program
    python -m experiments.vae --epochs 2 --workdir /tmp/vae-local  # smoke test

Outputs in the workdir: config.json, metrics.jsonl, summary.json,
checkpoints/ (Orbax) and reconstructions.png, samples.png,
interpolation.png, latent_space.png, loss_curves.png (from the first seed).
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

from vae_jax import distributed, plots, runner, tasks
from vae_jax.checkpoint import CheckpointError
from vae_jax.cli import ConfigError, parse_config, user_errors
from vae_jax.data import DataError


def latent_view(means: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    """2-D coordinates of posterior means: the means themselves, or their top-2 principal components."""
    if means.shape[1] == 1:
        return np.concatenate([means, np.zeros_like(means)], axis=1), ("z[0]", "(none)")
    if means.shape[1] == 2:
        return means, ("z[0]", "z[1]")
    from sklearn.decomposition import PCA

    return PCA(n_components=2).fit_transform(means), ("PC 1 of posterior mean", "PC 2 of posterior mean")


def write_figures(config, model, result: runner.TrainResult) -> list[str]:
    params = result.params(0)
    data = result.dataset
    workdir = config.workdir
    x_test = data.x_test
    paths = []
    recon = tasks.reconstruct(model, params, x_test[:10])
    paths.append(plots.save_reconstructions(x_test[:10], recon, os.path.join(workdir, "reconstructions.png"),
                                            f"Test digits and their reconstructions (seed {result.seeds[0]})"))
    samples = tasks.sample_prior(model, params, jax.random.key(config.seed), 50)
    paths.append(plots.save_grid(samples, os.path.join(workdir, "samples.png"), "Decoded samples z ~ N(0, I)"))
    a, b = 0, 1
    if data.y_test is not None:  # two test images of different classes
        b = int(np.nonzero(data.y_test != data.y_test[a])[0][0])
    strip = tasks.interpolate(model, params, x_test[a], x_test[b], steps=10)
    paths.append(plots.save_image_rows(
        [np.stack([x_test[a], x_test[b]]), strip], ["endpoints", "z path"],
        os.path.join(workdir, "interpolation.png"), "Decodings along the line between two posterior means"))
    means = tasks.encode_means(model, params, x_test)
    coords, axis_labels = latent_view(means)
    paths.append(plots.save_latent_scatter(coords, data.y_test, os.path.join(workdir, "latent_space.png"),
                                           "Test posterior means", axis_labels))
    paths.append(plots.save_curves(result.history, ["train_loss", "test_neg_elbo", "test_recon", "test_kl"],
                                   os.path.join(workdir, "loss_curves.png"), "Training and test loss"))
    return paths


@user_errors(ConfigError, DataError, CheckpointError, runner.TrainingDiverged)
def main(argv=None) -> None:
    config = parse_config(tasks.VAEConfig, argv, description=__doc__.split("\n\n")[0])
    dataset = runner.load_data(config)
    model, task = tasks.vae_task(config, dataset.image_shape)
    result = runner.train(config, task, dataset)
    figures = write_figures(config, model, result) if distributed.is_main_process() else []  # one writer
    runner.write_summary(config.workdir, result.summary, figures)
    test = result.summary["test"]
    print(f"data: {result.dataset.describe()}", file=sys.stderr)
    print(f"test neg-ELBO {test['neg_elbo']['mean']:.2f} nats (recon {test['recon']['mean']:.2f}, "
          f"KL {test['kl']['mean']:.2f}); outputs in {config.workdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
