"""Train the convolutional VAE (MNIST by default; --preset faces128 for the lecture's face model).

    python -m experiments.conv_vae --epochs 20 --workdir runs/conv_vae
    python -m experiments.conv_vae --preset faces128 --dataset folder:data/faces --batch-size 16 \
        --epochs 400 --workdir runs/faces128                      # the lecture's 128x128x3 face model
    python -m experiments.conv_vae --epochs 2 --workdir /tmp/conv-local   # smoke test

Outputs in the workdir: config.json, metrics.jsonl (with ``train_eval_*``, the test metrics on a
fixed subset of training images), summary.json (with the collapse ``diagnostics`` and the
``prior_vs_mixture`` sample quality), checkpoints/ and the figures listed in docs/experiments/conv_vae.md.
"""

from __future__ import annotations

import os

import jax

from vae_jax import diagnostics, latent_metrics, latent_views, plots, runner, tasks
from vae_jax import workdir as workdir_lib
from vae_jax.cli import parse_config, user_errors
from vae_jax.tasks import conv_vae


def write_figures(config, model, result: runner.TrainResult) -> tuple[list[str], dict]:
    params, data, workdir = result.params(0), result.dataset, config.workdir
    key_samples, key_mixture, key_mi = jax.random.split(jax.random.key(config.seed), 3)
    path = lambda name: os.path.join(workdir, name)  # noqa: E731
    with latent_views.analysis_threads() as side:  # the t-SNE, started first, runs beside everything below
        means = None if data.y_test is None else tasks.encode_means(model, params, data.x_test[: config.tsne_points])
        tsne = None if means is None else side.submit(tsne_of, means, config.seed)
        paths = sample_figures(model, params, result, key_samples, path)
        report, figures = analyses(config, model, params, data, key_mi, key_mixture, path)
        paths += figures
        if tsne is not None:
            title, axis_labels = f"t-SNE of {len(means)} test posterior means", ("t-SNE 1", "t-SNE 2")
            labels = data.y_test[: len(means)]
            paths.append(plots.save_latent_scatter(tsne.result(), labels, path("tsne.png"), title, axis_labels))
    return paths, report


def sample_figures(model, params, result: runner.TrainResult, key, path) -> list[str]:
    """Reconstructions of training and test images, the train/test curves and decoded prior samples."""
    n, data = 10, result.dataset
    x_train, x_test = data.x_train_first(n), data.x_test
    rows = [x_train[:n], tasks.reconstruct(model, params, x_train[:n])]
    rows += [x_test[:n], tasks.reconstruct(model, params, x_test[:n])]
    labels = ["train", "reconstruction", "test (unseen)", "reconstruction"]
    title = f"Training and unseen test images and their reconstructions (seed {result.seeds[0]})"
    paths = [plots.save_image_rows(rows, labels, path("reconstructions.png"), title)]
    keys = ["train_eval_neg_elbo", "test_neg_elbo", "train_eval_recon", "test_recon"]
    title = "neg-ELBO and reconstruction on seen (train_eval) vs unseen (test) images"
    paths.append(plots.save_curves(result.history, keys, path("train_test_gap.png"), title))
    samples = tasks.sample_prior(model, params, key, 50)
    return paths + [plots.save_grid(samples, path("samples.png"), "Decoded samples z ~ N(0, I)")]


def tsne_of(means, seed: int):
    """The 2-D t-SNE of posterior means ``[N, D]`` (the means themselves when D is 2)."""
    if means.shape[1] == 2:
        return means
    # A rerun on the same checkpoint finds the same means and loads their t-SNE.
    (coords,) = latent_metrics.cached_by_inputs(
        "tsne-v1", lambda: (latent_views.tsne_2d(means, seed),), (means,), seed=seed
    )
    return coords


def analyses(config, model, params, data, key_mi, key_mixture, path) -> tuple[dict, list[str]]:
    """The collapse diagnostics and the prior-vs-mixture sample quality, with their figures."""
    report = {"diagnostics": diagnostics.vae_collapse_diagnostics(model, params, data.x_test, key_mi)}
    paths = [plots.save_kl_per_dim({"z": report["diagnostics"]["mean_kl_per_dim"]}, path("kl_per_dim.png"))]
    classifier = None if data.y_train is None else latent_metrics.fit_digit_classifier(data.train_pixels, data.y_train)
    quality, prior_images, mixture_images = latent_views.prior_vs_mixture(
        model,
        params,
        data.x_train_first(),
        key_mixture,
        n_components=config.mixture_components,
        classifier=classifier,
        seed=config.seed,
    )
    report["prior_vs_mixture"] = quality
    rows = [prior_images[:12], mixture_images[:12]]
    labels = ["z ~ N(0, I)", f"z ~ GMM({config.mixture_components}) of q(z)"]
    title = "Prior samples vs samples of a Gaussian mixture fitted to the aggregate posterior"
    paths.append(plots.save_image_rows(rows, labels, path("mixture_samples.png"), title))
    return report, paths


@user_errors()
def main(argv=None) -> dict:
    config = parse_config(conv_vae.ConvVAEConfig, argv, description=__doc__.split("\n\n")[0]).resolved()
    latent_metrics.import_sklearn_in_background([workdir_lib.check_workdir(config)])  # t-SNE, mixture, classifier
    return runner.train_and_report(
        config, conv_vae.conv_vae_task, report, train_eval_examples=config.train_eval_examples
    )


def report(config, model, result: runner.TrainResult) -> dict:
    """Figures, ``summary.json`` and the result line (process 0 alone); returns the summary.

    A rerun on the same checkpoint, data and flags, with every figure present, reuses them.
    """

    def compute():
        figures, measured = write_figures(config, model, result)
        return {**result.summary, **measured}, figures

    summary = runner.reuse_or_compute_summary(config, result, compute)
    test, last, diag = summary["test"], result.history[-1] if result.history else {}, summary["diagnostics"]
    print(
        f"test neg-ELBO {test['neg_elbo']['mean']:.2f} nats (recon {test['recon']['mean']:.2f}, KL "
        f"{test['kl']['mean']:.2f}); train-subset neg-ELBO {last.get('train_eval_neg_elbo', float('nan')):.2f}; "
        f"active units {diag['active_units']}/{diag['latent_dim']}, I(x;z) {diag['mutual_information']:.2f} nats; "
        f"outputs in {config.workdir}"
    )
    return summary


if __name__ == "__main__":
    main()
