"""A VQ-VAE's codebook usage and the samples of its PixelCNN prior, measured and drawn (``experiments.vqvae``).

:func:`train_variant` trains one option combination's VQ-VAE and the prior on its codes;
:func:`report_variant` writes its ``summary.json`` and figures (reused on a rerun on the same
checkpoints, data and flags); :func:`comparison_table` puts several combinations side by side.
The samples are measured (distance to the nearest training image, a digit classifier's confidence)
beside decoded uniform random code grids and an MLP VAE's N(0, I) samples (:func:`vae_samples`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import jax
import matplotlib.pyplot as plt
import numpy as np

from vae_jax import data as data_lib
from vae_jax import latent_metrics, plots, runner, tasks
from vae_jax import workdir as workdir_lib
from vae_jax.tasks import prior as prior_lib
from vae_jax.tasks import vqvae as vq


def vae_samples(vae_workdir: str, baseline_config: tasks.VAEConfig | None, dataset, key, n: int):
    """Decoded N(0, I) samples ``[n, H, W, C]`` of the MLP VAE in ``vae_workdir``, else of the one
    ``baseline_config`` trains (or resumes); None when neither is given."""
    if vae_workdir:
        vae_config = workdir_lib.load_run_config(vae_workdir, tasks.VAEConfig)
        model, task = tasks.vae_task(vae_config, dataset.image_shape)
        _, state = runner.restore_state(vae_config, task)
        params = jax.tree_util.tree_map(lambda a: a[0], state.params)
    elif baseline_config is not None:
        model, task = tasks.vae_task(baseline_config, dataset.image_shape)
        params = runner.train(baseline_config, task, dataset).params(0)
    else:
        return None
    return tasks.sample_prior(model, params, key, n)


def save_usage_histogram(counts: np.ndarray, path: str, title: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(np.arange(len(counts)), counts / counts.sum(), width=1.0)
    ax.set_xlabel("code index k")
    ax.set_ylabel("share of test grid cells")
    ax.set_title(title, fontsize=10)
    return plots.save_figure(fig, path)


def train_variant(vq_config: vq.VQVAEConfig, prior_config: prior_lib.PriorConfig, dataset) -> dict:
    """Trains one option combination's VQ-VAE and, when ``prior_config.epochs`` > 0, its prior on the codes
    (every process of a ``--distributed`` run); returns ``model``, ``result``, ``usage_by_epoch``,
    ``test_codes`` (the first seed's code grids of the test images) and ``prior`` (model, result) or None."""
    model, task = vq.vqvae_task(vq_config, dataset.image_shape, dataset.x_train_first())
    result = runner.train(vq_config, task, dataset)
    params = result.params(0)
    trained = {
        "model": model,
        "result": result,
        "prior": None,
        # read from the checkpoints, which every process opens together
        "usage_by_epoch": usage_by_epoch(vq_config, task, model, dataset.x_test, result),
        "test_codes": vq.encode_indices(model, params, dataset.x_test),
    }
    if prior_config.epochs:
        chunks = data_lib.float_chunks(dataset.train_pixels)
        train_codes = np.concatenate([vq.encode_indices(model, params, x) for x in chunks])
        codes_data = prior_lib.codes_dataset(train_codes, trained["test_codes"], f"VQ-VAE codes of {dataset.source}")
        prior_model, prior_task = prior_lib.prior_task(prior_config, model.grid_shape, model.num_codes)
        trained["prior"] = (prior_model, runner.train(prior_config, prior_task, codes_data))
    return trained


def usage_by_epoch(vq_config, task, model, x_test, result: runner.TrainResult) -> list[dict]:
    """Codebook usage of every checkpoint (already in a finished run's summary.json when it was read back)."""
    if result.reused_summary and "usage_by_epoch" in result.summary:
        return result.summary["usage_by_epoch"]
    return checkpoint_usage(vq_config, task, model, x_test)


def checkpoint_usage(config, task, model, x: np.ndarray) -> list[dict]:
    """``[{"epoch", "codes_used", "perplexity"}]`` over all of ``x`` (:func:`vae_jax.tasks.vqvae.code_usage`,
    averaged over the seeds and listed per seed) for every checkpoint kept that restores (the others warned of)."""
    from vae_jax import checkpoint  # Orbax: imported when a checkpoint is read, not with the report

    abstract = runner.state_template(config, task)
    manager = checkpoint.make_manager(config.workdir, keep=config.keep_checkpoints)
    out = []
    try:
        for step in sorted(manager.all_steps()):
            try:
                state = checkpoint.restore_epoch(manager, step, abstract)
            except Exception as err:
                print(
                    f"warning: checkpoint {step} in {manager.directory} cannot be restored "
                    f"({checkpoint.one_line(err)}); its codebook usage is left out",
                    file=sys.stderr,
                )
                continue
            usage = [
                vq.code_usage(model, jax.tree_util.tree_map(lambda a: a[r], state.params), x)
                for r in range(len(config.seed_list()))
            ]
            per_seed = {name: [u[name] for u in usage] for name in ("codes_used", "perplexity")}
            means = {name: float(np.mean(values)) for name, values in per_seed.items()}
            out.append({"epoch": int(step), **means, **{f"per_seed_{k}": v for k, v in per_seed.items()}})
    finally:
        checkpoint.close(manager)
    return out


def report_variant(config, vq_config, dataset, classifier: Callable, vae_images, trained: dict) -> dict:
    """One option combination's usage, sample quality, figures and ``summary.json`` (process 0); returns the
    summary, reused on a rerun on the same checkpoints, data and flags with every figure present.
    ``classifier()`` gives the digit classifier (or None), called only when the report is computed."""
    prior = trained["prior"]
    fingerprint = workdir_lib.report_fingerprint(
        {
            "vqvae": jax.device_get(trained["result"].state.params),
            "prior": None if prior is None else jax.device_get(prior[1].state.params),
            "vae_images": vae_images,
        },
        {
            "vqvae": workdir_lib.result_settings(vq_config),
            "report": {"seed": config.seed, "num_samples": config.num_samples},
            "dataset": dataset.summary(),
        },
    )
    return workdir_lib.reuse_or_compute(
        os.path.join(vq_config.workdir, "summary.json"),
        fingerprint,
        lambda: variant_report(config, vq_config, dataset, classifier(), vae_images, trained),
    )


def variant_report(config, vq_config, dataset, classifier, vae_images, trained: dict) -> tuple[dict, list[str]]:
    """The summary of :func:`report_variant` and the paths of the figures it drew."""
    model, result = trained["model"], trained["result"]
    usage = [vq.usage_of_indices(trained["test_codes"], model.num_codes)]
    usage += [vq.code_usage(model, result.params(r), dataset.x_test) for r in range(1, len(result.seeds))]
    summary = {
        **result.summary,
        "codebook_size": model.num_codes,
        "codes_used": runner.mean_std([u["codes_used"] for u in usage]),
        "perplexity": runner.mean_std([u["perplexity"] for u in usage]),
        "usage_by_epoch": trained["usage_by_epoch"],
    }
    figures = usage_figures(vq_config.workdir, dataset.x_test, trained, usage[0])
    generated = generated_images(config, dataset.x_test, trained, vae_images, summary)
    # x_train: the first 10,000 training images at most (the nearest-neighbour distances)
    x_train = dataset.x_train_first()
    summary["sample_quality"] = {
        name: latent_metrics.image_quality(images, x_train, classifier) for name, images in generated.items()
    }
    rows, labels = [images[:10] for images in generated.values()], [n.replace("_", " ") for n in generated]
    title = "Decoded samples: learned prior, uniform codes, VAE N(0, I); test reconstructions"
    figures.append(plots.save_image_rows(rows, labels, os.path.join(vq_config.workdir, "samples.png"), title))
    return summary, figures


def usage_figures(workdir: str, x_test: np.ndarray, trained: dict, usage: dict) -> list[str]:
    """reconstructions.png, codebook_usage.png (the first seed's ``usage``), usage_by_epoch.png, loss_curves.png."""
    model, result = trained["model"], trained["result"]
    test = result.summary["test"]
    return [
        plots.save_reconstructions(
            x_test[:10],
            vq.reconstruct(model, result.params(0), x_test[:10]),
            os.path.join(workdir, "reconstructions.png"),
            f"Test images and VQ-VAE reconstructions (MSE {test['mse']['mean']:.4f}, "
            f"PSNR {test['psnr']['mean']:.1f} dB)",
        ),
        save_usage_histogram(
            usage["counts"],
            os.path.join(workdir, "codebook_usage.png"),
            f"Codebook usage over the test set: {usage['codes_used']}/{model.num_codes} codes "
            f"used, perplexity {usage['perplexity']:.1f}",
        ),
        plots.save_curves(
            trained["usage_by_epoch"],
            ["codes_used", "perplexity"],
            os.path.join(workdir, "usage_by_epoch.png"),
            "Codebook usage over the test set by epoch",
            ylabel="codes",
        ),
        plots.save_loss_curves(
            result.history, workdir, ["train_loss", "test_loss", "test_recon"], "VQ-VAE training and test loss"
        ),
    ]


def generated_images(config, x_test: np.ndarray, trained: dict, vae_images, summary: dict) -> dict:
    """``{name: decoded images}`` of each generator; adds the prior's test bits/dim and NLL to ``summary``."""
    model, params = trained["model"], trained["result"].params(0)
    key = jax.random.key(config.seed)
    grids = vq.uniform_code_grids(jax.random.fold_in(key, 1), config.num_samples, model.grid_shape, model.num_codes)
    generated = {"uniform_codes": vq.decode_indices(model, params, grids)}
    if trained["prior"] is not None:
        prior_model, prior_result = trained["prior"]
        summary["prior_test_bits_per_dim"] = prior_result.summary["test"]["bits_per_dim"]["mean"]
        summary["prior_test_nll"] = prior_result.summary["test"]["nll"]["mean"]
        summary["uniform_prior_bits_per_dim"] = float(np.log2(model.num_codes))
        sampled = prior_samples(prior_model, prior_result.params(0), jax.random.fold_in(key, 2), config, model)
        generated = {"prior_samples": vq.decode_indices(model, params, sampled), **generated}
    if vae_images is not None:
        generated["vae_normal_samples"] = vae_images
    generated["test_reconstructions"] = vq.reconstruct(model, params, x_test[: config.num_samples])
    return generated


def prior_samples(prior_model, prior_params, sample_key, config, model) -> np.ndarray:
    """``config.num_samples`` code grids drawn from the prior, kept in the user cache (same checkpoint and key,
    same grids)."""
    (sampled,) = latent_metrics.cached_by_inputs(
        "prior_samples-v1",
        lambda: (prior_lib.sample_codes(prior_model, prior_params, sample_key, config.num_samples, model.grid_shape),),
        (*jax.tree_util.tree_leaves(prior_params), jax.random.key_data(sample_key)),
        model=repr(prior_model),
        n=config.num_samples,
        grid_shape=tuple(model.grid_shape),
    )
    return sampled


def variant_name(vq_config) -> str:
    """A combination's row name in the comparison table when the flags give no list."""
    return f"{vq_config.codebook}, k-means {vq_config.kmeans_init}, dead-code steps {vq_config.dead_code_steps[0]}"


def comparison_table(rows: list[tuple[str, dict]]) -> str:
    """A Markdown table of ``(name, summary)`` rows: test MSE and PSNR, codebook usage, prior bits/dim and
    sample quality."""

    def number(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        "| options | test MSE | PSNR (dB) | codes used | perplexity | prior bits/dim | prior samples: "
        "classifier max-prob | NN distance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in rows:
        quality = s["sample_quality"].get("prior_samples", {})
        lines.append(
            f"| {name} | {s['test']['mse']['mean']:.4f} | {s['test']['psnr']['mean']:.2f} | "
            f"{s['codes_used']['mean']:.0f}/{s['codebook_size']} | {s['perplexity']['mean']:.1f} | "
            f"{number(s.get('prior_test_bits_per_dim'), 3)} | {number(quality.get('mean_max_prob'), 3)} | "
            f"{number(quality.get('nn_distance_mean'), 2)} |"
        )
    return "\n".join(lines)
