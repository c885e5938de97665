"""Two-stage VQ-VAE: train the VQ-VAE, then a PixelCNN prior on its frozen codes, and measure the samples.

    python -m experiments.vqvae --epochs 10 --prior-epochs 10 --workdir runs/vqvae
    python -m experiments.vqvae --codebook grad,ema --kmeans-init off,on --workdir runs/vq_compare  # one table
    python -m experiments.vqvae --epochs 1 --prior-epochs 1 --vae-epochs 1 --workdir /tmp/vq-local  # smoke test

The default codebook is the best measured setting (docs/experiments/vqvae_codebook.md):
EMA with dead-code restarts after 100 steps, no k-means init. ``--dead-code-steps 0``
gives the earlier default (EMA alone), ``--codebook grad --dead-code-steps 0`` the
paper's gradient codebook, ``--ema-rule sonnet`` Sonnet's and Haiku's EMA step.

Stage 1 trains the VQ-VAE through the shared runner; stage 2 trains the PixelCNN prior on the first
seed's code grids in ``prior/``. Prior samples are measured beside decoded uniform code grids and the
N(0, I) samples of an MLP VAE (trained in ``vae_baseline/``, or read from ``--vae-workdir``). With option
lists, each combination gets its own ``NAME/`` and ``comparison.md`` sets them side by side. The outputs
are listed in docs/experiments/vqvae.md; training, measurements and figures are in :mod:`vae_jax.reports.vqvae`.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax

from vae_jax import distributed, latent_metrics, protocol, runner, tasks
from vae_jax import workdir as workdir_lib
from vae_jax.cli import parse_config, user_errors
from vae_jax.errors import field, require
from vae_jax.reports import vqvae as vq_report
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


def stage_config(cls, config, workdir: str, epochs: int, **settings):
    """A later stage's config (the prior, the VAE baseline): ``config``'s training settings, one seed,
    ``epochs``, a checkpoint every 5 epochs (the newest kept), in ``workdir``."""
    common = {f.name: getattr(config, f.name) for f in dataclasses.fields(protocol.TrainConfig)}
    stage = {"seeds": "", "epochs": epochs, "checkpoint_every": 5, "keep_checkpoints": 1, "workdir": workdir}
    return cls(**{**common, **stage, **settings})


def stage_configs(config: VQVAEExperimentConfig, workdir: str):
    """The VQ-VAE config of one option combination and its prior's (in ``workdir/prior``)."""
    vq_fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(vq.VQVAEConfig)}
    prior_config = stage_config(
        prior_lib.PriorConfig,
        config,
        os.path.join(workdir, "prior"),
        config.prior_epochs,
        binarize="none",
        batch_size=config.prior_batch_size,
        channels=config.prior_channels,
        layers=config.prior_layers,
        precision=config.precision,
    )
    return vq.VQVAEConfig(**{**vq_fields, "workdir": workdir}), prior_config


def vae_baseline_config(config) -> tasks.VAEConfig:
    """The MLP VAE trained for ``--vae-epochs`` (in ``workdir/vae_baseline``) to compare samples with."""
    return stage_config(tasks.VAEConfig, config, os.path.join(config.workdir, "vae_baseline"), config.vae_epochs)


def check_workdirs(config) -> list[workdir_lib.WorkdirPlan]:
    """Every stage's workdir, checked before any data is loaded or anything is trained (one-line errors);
    returns their plans."""
    plans = []
    for _, variant in config.variants():
        vq_config, prior_config = stage_configs(variant, variant.workdir)
        plans.append(workdir_lib.check_workdir(vq_config))
        if config.prior_epochs:
            plans.append(workdir_lib.check_workdir(prior_config))
    if config.vae_epochs and not config.vae_workdir:
        plans.append(workdir_lib.check_workdir(vae_baseline_config(config)))
    return plans


@user_errors()
def main(argv=None) -> dict:
    config = parse_config(VQVAEExperimentConfig, argv, description=__doc__.split("\n\n")[0])
    plans = check_workdirs(config)
    dataset = runner.load_data(config)
    config.validate_for(dataset.image_shape)
    latent_metrics.import_sklearn_in_background(plans)  # its classifier
    baseline = vae_baseline_config(config) if config.vae_epochs else None
    vae_key = jax.random.fold_in(jax.random.key(config.seed), 3)
    vae_images = vq_report.vae_samples(config.vae_workdir, baseline, dataset, vae_key, config.num_samples)
    trained = []
    for name, variant in config.variants():
        vq_config, prior_config = stage_configs(variant, variant.workdir)
        trained.append((name, vq_config, vq_report.train_variant(vq_config, prior_config, dataset)))
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
        summary = vq_report.report_variant(config, vq_config, dataset, classifier, vae_images, variant)
        rows.append((name or vq_report.variant_name(vq_config), summary))
    table = vq_report.comparison_table(rows)
    result = rows[0][1]
    if len(rows) > 1:
        with open(os.path.join(config.workdir, "comparison.md"), "w") as f:
            f.write(table + "\n")
        result = {"variants": dict(rows)}
        workdir_lib.write_summary(config.workdir, result)
    distributed.log(f"data: {dataset.describe()}")
    print(table)
    print(f"outputs in {config.workdir}")
    return result


if __name__ == "__main__":
    main()
