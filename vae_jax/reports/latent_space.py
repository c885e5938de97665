"""AE and VAE latent spaces side by side, measured and drawn (``experiments.latent_space``, whose docstring
says what and how)."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from vae_jax import arrays, latent_metrics, latent_views, plots
from vae_jax import workdir as workdir_lib

NAMES = {"ae": "AE", "vae": "VAE"}


def latent_plane_grid(codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grid spanning the 1st-99th percentile of ``codes`` per axis.

    Returns ``(points [n*n, 2], z0 [n] left to right, z1 [n] top to bottom)``; the top row is the highest z[1].
    """
    lo, hi = np.percentile(codes, 1, axis=0), np.percentile(codes, 99, axis=0)
    z0, z1 = np.linspace(lo[0], hi[0], n), np.linspace(hi[1], lo[1], n)
    return np.stack(np.meshgrid(z0, z1), axis=-1).reshape(-1, 2), z0, z1


def report(config, dataset, trained_by_size: dict, tsne: dict | None = None) -> dict:
    """Sample quality, figures, ``summary.json`` and the result lines (process 0 alone); returns the summary,
    reused on a rerun on the same checkpoints, data and settings. ``trained_by_size`` maps each latent size
    to ``{kind: (model, params)}``; ``tsne``: :func:`submit_tsnes`'s futures when the t-SNEs were started
    earlier (else they start here)."""
    params = {f"{kind}_z{dim}": p for dim, trained in trained_by_size.items() for kind, (_, p) in trained.items()}
    fingerprint = workdir_lib.report_fingerprint(
        params, {"config": dataclasses.asdict(config), "dataset": dataset.summary()}
    )
    summary = workdir_lib.reuse_or_compute(
        os.path.join(config.workdir, "summary.json"),
        fingerprint,
        lambda: (measure_and_draw(config, dataset, trained_by_size, tsne), None),  # it lists its figures
    )
    print_results(summary, config.workdir)
    return summary


def submit_tsnes(pool, config, codes_by_size: dict, num_test: int) -> dict:
    """``{panel title: future}``: the t-SNE of each model's test codes ``codes_by_size[dim][kind]`` of every
    latent size but 2 (``config.tsne_points`` of the ``num_test`` test images, a fixed draw), one job each."""
    idx = tsne_indices(config, num_test)
    return {
        f"{NAMES[kind]} ({dim}-D)": pool.submit(latent_views.tsne_2d, codes[idx], config.seed)
        for dim, by_kind in codes_by_size.items()
        if dim != 2
        for kind, codes in by_kind.items()
    }


def tsne_indices(config, num_test: int) -> np.ndarray:
    return np.random.default_rng(config.seed).permutation(num_test)[: config.tsne_points]


def encode_test_images(trained: dict, x_test: np.ndarray) -> dict:
    """``{kind: codes [N, D]}`` of the test images under each model of ``trained`` (``{kind: (model, params)}``)."""
    return {kind: latent_metrics.encode(kind, model, params, x_test) for kind, (model, params) in trained.items()}


def measure_and_draw(config, dataset, trained_by_size: dict, tsne: dict | None = None) -> dict:
    """Sample quality and figures; returns the summary. The t-SNEs run beside the rest, one thread each."""
    x_train, x_test, y_test = dataset.x_train_first(), dataset.x_test, dataset.y_test  # 10,000 at most
    codes = {dim: encode_test_images(trained, x_test) for dim, trained in trained_by_size.items()}
    idx = tsne_indices(config, len(x_test))
    with latent_views.analysis_threads(2) as pool:
        tsne = submit_tsnes(pool, config, codes, len(x_test)) if tsne is None else tsne
        classifier = latent_metrics.fit_digit_classifier(dataset.train_pixels, dataset.y_train, seed=config.seed)
        reference = {
            "classifier_test_accuracy": float(classifier.score(x_test.reshape(len(x_test), -1), y_test)),
            "test_images": latent_metrics.image_quality(x_test[: config.num_samples], x_train, classifier),
        }
        sample_key = jax.random.fold_in(jax.random.key(config.seed), 2024)
        quality = {
            f"{kind}_z{dim}": latent_metrics.prior_sample_quality(
                kind, model, params, sample_key, x_train, x_test, classifier, config.num_samples
            )
            for dim, trained in trained_by_size.items()
            for kind, (model, params) in trained.items()
        }
        figures = plane_figures(config, trained_by_size[2], codes[2], y_test, sample_key)
        if tsne:
            title = f"t-SNE of {len(idx)} test codes"
            coords = {name: future.result() for name, future in tsne.items()}
            path = os.path.join(config.workdir, "tsne.png")
            figures.append(plots.save_latent_scatter(coords, y_test[idx], path, title, ("t-SNE 1", "t-SNE 2")))
    return {
        "seeds": config.seed_list(),
        "figures_from_seed": config.seed,
        "epochs": config.epochs,
        "dataset": dataset.summary(),
        "num_samples": config.num_samples,
        "reference": reference,
        "sample_quality": quality,
        "figures": [os.path.basename(p) for p in figures],
    }


def plane_figures(config, trained: dict, codes: dict, y_test, sample_key) -> list[str]:
    """The 2-D latents' figures: test codes, decodings over the plane, decoded N(0, I) draws."""
    path = lambda name: os.path.join(config.workdir, name)  # noqa: E731
    title = "Test codes with a 2-D latent (AE: z; VAE: posterior mean)"
    figures = [
        plots.save_latent_scatter({NAMES[k]: c for k, c in codes.items()}, y_test, path("latents_2d.png"), title)
    ]
    for kind, (model, params) in trained.items():
        points, z0, z1 = latent_plane_grid(codes[kind], config.grid_size)
        title = f"{NAMES[kind]}: decodings over the plane spanned by its test codes (1st-99th pct)"
        images = latent_metrics.decode_images(model, params, points)
        figures.append(plots.save_latent_grid(images, z0, z1, path(f"latent_grid_{kind}.png"), title))
    draws = arrays.standard_normal(sample_key, (20, 2))
    samples = [latent_metrics.decode_images(m, p, draws) for m, p in trained.values()]
    title = "Decodings of the same 20 draws z ~ N(0, I), 2-D latent"
    figures.append(plots.save_image_rows(samples, [NAMES[k] for k in trained], path("prior_samples.png"), title))
    return figures


def print_results(summary: dict, workdir: str) -> None:
    reference, quality = summary["reference"], summary["sample_quality"]
    print(
        f"classifier test accuracy {reference['classifier_test_accuracy']:.3f}; real test images: NN distance "
        f"{reference['test_images']['nn_distance_mean']:.2f}, max prob {reference['test_images']['mean_max_prob']:.3f}"
    )
    for name, q in quality.items():
        s, r = q["prior_samples"], q["test_reconstructions"]
        print(
            f"{name:8s} N(0,I) samples: NN distance {s['nn_distance_mean']:.2f} (reconstructions "
            f"{r['nn_distance_mean']:.2f}, ratio {q['nn_distance_ratio']:.2f}); classifier max prob "
            f"{s['mean_max_prob']:.3f} vs {r['mean_max_prob']:.3f}, entropy {s['mean_entropy']:.3f} vs "
            f"{r['mean_entropy']:.3f}; code std {np.mean(q['code_std']):.2f}"
        )
    print(f"outputs in {workdir}")
