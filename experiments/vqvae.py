"""Two-stage VQ-VAE: train the VQ-VAE, then a PixelCNN prior on its frozen codes, and measure the samples.

    python -m experiments.vqvae --epochs 10 --prior-epochs 10 --workdir runs/vqvae
    python -m experiments.vqvae --codebook grad,ema --kmeans-init off,on --workdir runs/vq_compare  # one table
    python -m experiments.vqvae --epochs 1 --prior-epochs 1 --vae-epochs 1 --workdir /tmp/vq-local  # smoke test

The default codebook is the best measured setting (docs/notes/vqvae_codebook.md):
EMA with dead-code restarts after 100 steps, no k-means init. ``--dead-code-steps 0``
gives the earlier default (EMA alone), ``--codebook grad --dead-code-steps 0`` the
paper's gradient codebook, ``--ema-rule sonnet`` Sonnet's and Haiku's EMA step.

Stage 1 trains the VQ-VAE (:mod:`vae_jax.tasks.vqvae`) through the shared
runner (``--seeds``, checkpoints, resume as in ``experiments.vae``). Stage 2
encodes the training and test images to code grids with the first seed's
model and trains the PixelCNN prior (:mod:`vae_jax.tasks.prior`) on them
through the runner in the sub-workdir ``prior/`` with its own checkpoints.
Prior samples are decoded and measured (distance to the nearest training
image, a digit classifier's confidence) beside decoded uniform random code
grids (the training-time prior) and the MLP VAE's N(0, I) samples (trained
here in ``vae_baseline/``, or read from ``--vae-workdir``).

Outputs in the workdir (per option combination in ``NAME/`` when lists are
given, with ``comparison.md`` on top): config.json, metrics.jsonl,
summary.json (``codebook_size``, ``codes_used`` and ``perplexity`` over the
whole test set, ``prior_test_bits_per_dim``, ``sample_quality``,
``usage_by_epoch``), checkpoints/, prior/, reconstructions.png, samples.png,
codebook_usage.png, usage_by_epoch.png, loss_curves.png.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import jax
import matplotlib.pyplot as plt  # noqa: E402  (Agg backend set by vae_jax.plots)
import numpy as np

from vae_jax import data as data_lib
from vae_jax import latent_metrics, plots, runner, tasks
from vae_jax import workdir as workdir_lib
from vae_jax.checkpoint import CheckpointError
from vae_jax.cli import ConfigError, field, parse_config, require, user_errors
from vae_jax.data import DataError
from vae_jax.tasks import prior as prior_lib
from vae_jax.tasks import vqvae as vq


@dataclasses.dataclass(frozen=True)
class VQVAEExperimentConfig(vq.VQVAEConfig):
    prior_epochs: int = field(10, "epochs of the PixelCNN prior on the codes (0: no stage 2)")
    prior_batch_size: int = field(64, "batch size of the prior")
    prior_channels: int = field(32, "channels of the prior's masked-convolution stacks")
    prior_layers: int = field(4, "gated layers of the prior")
    num_samples: int = field(500, "decoded samples measured per generator")
    vae_workdir: str = field("", "workdir of a trained experiments.vae run to compare with (default: train one)")
    vae_epochs: int = field(10, "epochs of the MLP VAE trained for the comparison (0: no VAE comparison)")

    def validate(self) -> None:
        super().validate()
        for name in ("prior_epochs", "vae_epochs"):
            require(getattr(self, name) >= 0, name, "a non-negative integer", getattr(self, name))
        for name in ("prior_batch_size", "prior_channels", "prior_layers", "num_samples"):
            require(getattr(self, name) > 0, name, "a positive integer", getattr(self, name))


def train_settings(config) -> dict:
    """The experiment's shared training settings (every ``runner.TrainConfig`` field), for a stage's config."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(runner.TrainConfig)}


def stage_configs(config: VQVAEExperimentConfig, workdir: str):
    """The VQ-VAE config of one option combination and its prior's (in ``workdir/prior``)."""
    vq_config = vq.VQVAEConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(vq.VQVAEConfig)})
    common = train_settings(config)
    prior_config = prior_lib.PriorConfig(
        **{
            **common,
            "binarize": "none",
            "seeds": "",
            "epochs": config.prior_epochs,
            "checkpoint_every": 5,
            "keep_checkpoints": 1,
            "batch_size": config.prior_batch_size,
            "channels": config.prior_channels,
            "layers": config.prior_layers,
            "precision": config.precision,
            "workdir": os.path.join(workdir, "prior"),
        }
    )
    return dataclasses.replace(vq_config, workdir=workdir), prior_config


def vae_baseline_config(config) -> tasks.VAEConfig:
    """The MLP VAE trained for ``--vae-epochs`` (in ``workdir/vae_baseline``) to compare samples with."""
    common = train_settings(config)
    return tasks.VAEConfig(
        **{
            **common,
            "seeds": "",
            "epochs": config.vae_epochs,
            "checkpoint_every": 5,
            "keep_checkpoints": 1,
            "workdir": os.path.join(config.workdir, "vae_baseline"),
        }
    )


def check_workdirs(config) -> None:
    """Every stage's workdir, checked before any data is loaded or anything is trained (one-line errors)."""
    for _, variant in config.variants():
        vq_config, prior_config = stage_configs(variant, variant.workdir)
        workdir_lib.check_workdir(vq_config)
        if config.prior_epochs:
            workdir_lib.check_workdir(prior_config)
    if config.vae_epochs and not config.vae_workdir:
        workdir_lib.check_workdir(vae_baseline_config(config))


def vae_samples(config, dataset, key):
    """Decoded N(0, I) samples ``[num_samples, H, W, C]`` of an MLP VAE (None with ``--vae-epochs 0``)."""
    if config.vae_workdir:
        vae_config = workdir_lib.load_run_config(config.vae_workdir, tasks.VAEConfig)
        model, task = tasks.vae_task(vae_config, dataset.image_shape)
        _, state = runner.restore_state(vae_config, task)
        params = jax.tree_util.tree_map(lambda a: a[0], state.params)
    elif config.vae_epochs:
        vae_config = vae_baseline_config(config)
        model, task = tasks.vae_task(vae_config, dataset.image_shape)
        params = runner.train(vae_config, task, dataset).params(0)
    else:
        return None
    return tasks.sample_prior(model, params, key, config.num_samples)


def save_usage_histogram(counts: np.ndarray, path: str, title: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(np.arange(len(counts)), counts / counts.sum(), width=1.0)
    ax.set_xlabel("code index k")
    ax.set_ylabel("share of test grid cells")
    ax.set_title(title, fontsize=10)
    return plots.save_figure(fig, path)


def train_variant(config, vq_config, prior_config, dataset) -> dict:
    """Trains one option combination's VQ-VAE and, with ``--prior-epochs``, its prior on the codes (every
    process of a ``--distributed`` run); returns ``model``, ``result``, ``usage_by_epoch``, ``test_codes`` (the
    first seed's code grids of the test images) and ``prior`` (model, result) or None."""
    model, task = vq.vqvae_task(vq_config, dataset.image_shape, dataset.x_train_first())
    result = runner.train(vq_config, task, dataset)
    # read from the checkpoints, which every process opens together
    trained = {
        "model": model,
        "result": result,
        "prior": None,
        "usage_by_epoch": _usage_by_epoch(vq_config, task, model, dataset.x_test, result),
        "test_codes": vq.encode_indices(model, result.params(0), dataset.x_test),  # the first seed's
    }
    if config.prior_epochs:
        params = result.params(0)
        train_codes = np.concatenate(
            [vq.encode_indices(model, params, x) for x in data_lib.float_chunks(dataset.train_pixels)]
        )
        codes_data = prior_lib.codes_dataset(train_codes, trained["test_codes"], f"VQ-VAE codes of {dataset.source}")
        prior_model, prior_task = prior_lib.prior_task(prior_config, model.grid_shape, model.num_codes)
        trained["prior"] = (prior_model, runner.train(prior_config, prior_task, codes_data))
    return trained


def _usage_by_epoch(vq_config, task, model, x_test, result) -> list[dict]:
    """Codebook usage of every checkpoint; a finished run whose summary.json was read back (nothing trained)
    already holds it."""
    if result.reused_summary and "usage_by_epoch" in result.summary:
        return result.summary["usage_by_epoch"]
    return runner.usage_by_epoch(vq_config, task, model, x_test)


def report_variant(config, vq_config, dataset, classifier: Callable, vae_images, trained: dict) -> dict:
    """One option combination's usage, sample quality, figures and ``summary.json`` (process 0); returns the
    summary. A rerun on the same checkpoints, data and flags, with every figure present, reuses them.
    ``classifier()`` gives the digit classifier (or None) when the report is computed."""
    path = os.path.join(vq_config.workdir, "summary.json")
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
        path, fingerprint, lambda: variant_report(config, vq_config, dataset, classifier(), vae_images, trained)
    )


def variant_report(config, vq_config, dataset, classifier, vae_images, trained: dict) -> dict:
    """The summary of :func:`report_variant` and the paths of the figures it drew."""
    # x_train: the first 10,000 training images at most (the nearest-neighbour distances)
    workdir, x_train, x_test = vq_config.workdir, dataset.x_train_first(), dataset.x_test
    model, result = trained["model"], trained["result"]
    params = result.params(0)
    usage = [vq.usage_of_indices(trained["test_codes"], model.num_codes)]
    usage += [vq.code_usage(model, result.params(r), x_test) for r in range(1, len(result.seeds))]
    summary = {
        **result.summary,
        "codebook_size": model.num_codes,
        "codes_used": runner.mean_std([u["codes_used"] for u in usage]),
        "perplexity": runner.mean_std([u["perplexity"] for u in usage]),
        "usage_by_epoch": trained["usage_by_epoch"],
    }
    test = result.summary["test"]
    figures = [
        plots.save_reconstructions(
            x_test[:10],
            vq.reconstruct(model, params, x_test[:10]),
            os.path.join(workdir, "reconstructions.png"),
            f"Test images and VQ-VAE reconstructions (MSE {test['mse']['mean']:.4f}, "
            f"PSNR {test['psnr']['mean']:.1f} dB)",
        ),
        save_usage_histogram(
            usage[0]["counts"],
            os.path.join(workdir, "codebook_usage.png"),
            f"Codebook usage over the test set: {usage[0]['codes_used']}/{model.num_codes} codes "
            f"used, perplexity {usage[0]['perplexity']:.1f}",
        ),
        plots.save_curves(
            summary["usage_by_epoch"],
            ["codes_used", "perplexity"],
            os.path.join(workdir, "usage_by_epoch.png"),
            "Codebook usage over the test set by epoch",
            ylabel="codes",
        ),
        plots.save_curves(
            result.history,
            ["train_loss", "test_loss", "test_recon"],
            os.path.join(workdir, "loss_curves.png"),
            "VQ-VAE training and test loss",
        ),
    ]
    key = jax.random.key(config.seed)
    generated = {
        "uniform_codes": vq.decode_indices(
            model,
            params,
            vq.uniform_code_grids(jax.random.fold_in(key, 1), config.num_samples, model.grid_shape, model.num_codes),
        )
    }
    if trained["prior"] is not None:
        prior_model, prior_result = trained["prior"]
        summary["prior_test_bits_per_dim"] = prior_result.summary["test"]["bits_per_dim"]["mean"]
        summary["prior_test_nll"] = prior_result.summary["test"]["nll"]["mean"]
        summary["uniform_prior_bits_per_dim"] = float(np.log2(model.num_codes))
        prior_params, sample_key = prior_result.params(0), jax.random.fold_in(key, 2)
        # the same prior checkpoint and key draw the same grids: a rerun loads them from the user cache
        (sampled,) = latent_metrics.cached_by_inputs(
            "prior_samples-v1",
            lambda: (
                prior_lib.sample_codes(prior_model, prior_params, sample_key, config.num_samples, model.grid_shape),
            ),
            (*jax.tree_util.tree_leaves(prior_params), jax.random.key_data(sample_key)),
            model=repr(prior_model),
            n=config.num_samples,
            grid_shape=tuple(model.grid_shape),
        )
        generated = {"prior_samples": vq.decode_indices(model, params, sampled), **generated}
    if vae_images is not None:
        generated["vae_normal_samples"] = vae_images
    generated["test_reconstructions"] = vq.reconstruct(model, params, x_test[: config.num_samples])
    summary["sample_quality"] = {
        name: latent_metrics.image_quality(images, x_train, classifier) for name, images in generated.items()
    }
    rows = [(name, images[:10]) for name, images in generated.items()]
    figures.append(
        plots.save_image_rows(
            [r for _, r in rows],
            [n.replace("_", " ") for n, _ in rows],
            os.path.join(workdir, "samples.png"),
            "Decoded samples: learned prior, uniform codes, VAE N(0, I); test reconstructions",
        )
    )
    return summary, figures


def comparison_table(rows: list[tuple[str, dict]]) -> str:
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


@user_errors(ConfigError, DataError, CheckpointError, runner.TrainingDiverged)
def main(argv=None) -> dict:
    config = parse_config(VQVAEExperimentConfig, argv, description=__doc__.split("\n\n")[0])
    check_workdirs(config)
    dataset = runner.load_data(config)
    config.validate_for(dataset.image_shape)
    vae_images = vae_samples(config, dataset, jax.random.fold_in(jax.random.key(config.seed), 3))
    trained = []
    for name, variant in config.variants():
        vq_config, prior_config = stage_configs(variant, variant.workdir)
        trained.append((name, vq_config, train_variant(config, vq_config, prior_config, dataset)))
    return runner.report_on_main(config.workdir, lambda: report(config, dataset, vae_images, trained))


def report(config, dataset, vae_images, trained: list) -> dict:
    """Every option combination's records and figures, the comparison table (``comparison.md`` for several)
    and the result lines (process 0 alone). ``trained`` holds ``(name, VQ-VAE config, train_variant's dict)``.
    Returns the summary of the run (the only combination's, or ``{"variants": ...}``)."""

    @functools.cache
    def classifier():  # fitted (or loaded from the user cache) only when a variant's report is computed
        if dataset.y_train is None:
            return None
        return latent_metrics.fit_digit_classifier(dataset.train_pixels, dataset.y_train, seed=config.seed)

    rows = []
    for name, vq_config, variant in trained:
        summary = report_variant(config, vq_config, dataset, classifier, vae_images, variant)
        rows.append(
            (
                name
                or f"{vq_config.codebook}, k-means {vq_config.kmeans_init}, "
                f"dead-code steps {vq_config.dead_code_steps[0]}",
                summary,
            )
        )
    table = comparison_table(rows)
    result = rows[0][1]
    if len(rows) > 1:
        with open(os.path.join(config.workdir, "comparison.md"), "w") as f:
            f.write(table + "\n")
        result = {"variants": {name: s for name, s in rows}}
        workdir_lib.write_summary(config.workdir, result)
    runner.log(f"data: {dataset.describe()}")
    print(table)
    print(f"outputs in {config.workdir}")
    return result


if __name__ == "__main__":
    main()
