"""A linear autoencoder trained by gradient descent against PCA with the same m components.

    python -m experiments.pca_vs_linear_ae --components 16 --epochs 300 --workdir runs/pca_vs_linear_ae
    python -m experiments.pca_vs_linear_ae --components 10 --seeds 4       # 4 replicas in one run
    python -m experiments.pca_vs_linear_ae --epochs 20 --workdir /tmp/pca-local  # smoke test

The lecture's claim, and how both models see the data, are in :mod:`vae_jax.linear_ae`.

Outputs in the workdir: config.json, metrics.jsonl, summary.json (principal
angles between the AE decoder's column space and the top-m PCA subspace,
train/test MSE of both, orthogonality of both bases), checkpoints/, and
components.png, basis_geometry.png, reconstructions.png, loss_curves.png.
"""

from __future__ import annotations

import os

import numpy as np

from vae_jax import distributed, linear_ae, plots, runner
from vae_jax import workdir as workdir_lib
from vae_jax.cli import parse_config, user_errors
from vae_jax.errors import ConfigError


def write_figures(config, pca_fit, params, result: runner.TrainResult, angles_deg) -> list[str]:
    data = result.dataset
    shape = data.image_shape
    workdir = config.workdir
    w_d = linear_ae.decoder_columns(params)
    u = pca_fit.components.T
    paths = [
        plots.save_image_rows(
            [plots.signed_images(v, shape) for v in (u, w_d, linear_ae.align_basis(w_d, u))],
            ["PCA u_i", "AE W_d[:, i]", "W_d A ≈ U"],
            os.path.join(workdir, "components.png"),
            f"Top-{config.components} PCA components, the linear AE's decoder columns, and the AE columns recombined "
            "(least squares) into PCA's (gray = 0)",
        )
    ]
    matrices = linear_ae.cosine_matrix(w_d), linear_ae.cosine_to(w_d, u)
    paths.append(plots.save_basis_geometry(angles_deg, *matrices, os.path.join(workdir, "basis_geometry.png")))
    x = data.x_test[:10]
    paths.append(
        plots.save_image_rows(
            [
                x,
                np.clip(pca_fit.reconstruct(x.astype(np.float64)), 0, 1),
                np.clip(linear_ae.linear_ae_reconstruct(params, x, pca_fit.mean.astype(np.float32)), 0, 1),
            ],
            ["original", "PCA", "linear AE"],
            os.path.join(workdir, "reconstructions.png"),
            f"Test digits reconstructed from {config.components} components",
        )
    )
    paths.append(
        plots.save_loss_curves(
            result.history,
            workdir,
            ["train_loss", "test_sq_error"],
            "Linear AE squared error per image",
            ylabel="sum of squared pixel errors",
        )
    )
    return paths


@user_errors()
def main(argv=None) -> dict:
    config = parse_config(linear_ae.LinearAEConfig, argv, description=__doc__.split("\n\n")[0])
    workdir_lib.check_workdir(config)  # a workdir that cannot be used fails before any data is loaded
    dataset = runner.load_data(config)
    d = int(np.prod(dataset.image_shape))
    if config.components > min(d, len(dataset.x_train)):
        raise ConfigError(
            f"--components must be at most {min(d, len(dataset.x_train))} for this data, got {config.components}"
        )
    pca_fit = linear_ae.pca(dataset.x_train, config.components)
    _, task = linear_ae.linear_ae_task(config.components, pca_fit.mean.astype(np.float32))
    result = runner.train(config, task, dataset)
    return runner.report_on_main(config.workdir, lambda: report(config, pca_fit, dataset, result))


def compare(config: linear_ae.LinearAEConfig, pca_fit, dataset, result: runner.TrainResult) -> tuple[dict, list]:
    """The run's summary with PCA's numbers and the linear AE's (its first seed, and across seeds), and the figures."""
    replicas = [linear_ae.compare_with_pca(pca_fit, result.params(i), dataset) for i in range(len(result.seeds))]
    first = replicas[0]
    summary = result.summary
    summary["components"] = config.components
    summary["pca"] = {
        **linear_ae.split_errors(lambda x: pca_fit.reconstruct(x.astype(np.float64)), dataset),
        "explained_variance_ratio": float(pca_fit.explained_variance.sum() / pca_fit.total_variance),
        "orthogonality": linear_ae.orthogonality(pca_fit.components.T),
    }
    summary["linear_ae"] = {
        **first,
        "seed": result.seeds[0],
        "across_seeds": {
            key: runner.mean_std([r[key] for r in replicas])
            for key in ("max_principal_angle_deg", "mean_principal_angle_deg", "mse_train", "mse_test")
        },
    }
    return summary, write_figures(config, pca_fit, result.params(0), result, first["principal_angles_deg"])


def report(config: linear_ae.LinearAEConfig, pca_fit, dataset, result: runner.TrainResult) -> dict:
    """The comparison, figures, ``summary.json`` and the result lines (process 0 alone); returns the summary.

    A rerun on the same checkpoints, data and flags, with every figure present, reuses them.
    """
    summary = runner.reuse_or_compute_summary(config, result, lambda: compare(config, pca_fit, dataset, result))
    first = summary["linear_ae"]

    ortho = first["decoder_orthogonality"]
    distributed.log(f"data: {dataset.describe()}; m = {config.components}")
    print(
        f"principal angles span(W_d) vs PCA: max {first['max_principal_angle_deg']:.2f} deg, "
        f"mean {first['mean_principal_angle_deg']:.2f} deg"
    )
    print(
        f"test MSE per pixel: PCA {summary['pca']['mse_test']:.5f}, linear AE {first['mse_test']:.5f} "
        f"(train {summary['pca']['mse_train']:.5f} vs {first['mse_train']:.5f})"
    )
    print(
        f"AE basis: max |cos| between columns {ortho['max_abs_cosine']:.3f}, column norms "
        f"{ortho['column_norm_min']:.2f}..{ortho['column_norm_max']:.2f} (PCA: 0 and 1); mean best |cos| of a column "
        f"with one PCA component {first['mean_best_abs_cosine_to_a_pca_component']:.3f}; outputs in {config.workdir}"
    )
    return summary


if __name__ == "__main__":
    main()
