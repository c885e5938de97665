"""AE vs VAE latent spaces: 2-D latents, decodings over the plane, N(0, I) samples measured, t-SNE of 20-D latents.

    python -m experiments.latent_space --epochs 30 --workdir runs/latent_space
    python -m experiments.latent_space --epochs 2 --tsne-points 300 --workdir /tmp/latent-local  # smoke test

Trains a matched MLP AE and VAE (same widths and Bernoulli reconstruction loss; the VAE adds the KL
term) with a 2-D latent and again with a ``--tsne-latent-dim`` latent, each in its own resumable
sub-workdir (``ae_z2``, ``vae_z2``, ``ae_z20``, ``vae_z20``). Decoded draws z ~ N(0, I) are measured
against the same model's decoded test reconstructions: the distance to the nearest training image and
a digit classifier's confidence. Outputs (docs/experiments/latent_space.md): config.json, summary.json
(``sample_quality``) and the figures. Results go to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import dataclasses
import os

from vae_jax import distributed, latent_metrics, latent_views, runner
from vae_jax import workdir as workdir_lib
from vae_jax.cli import parse_config, user_errors
from vae_jax.errors import ConfigError, field, require
from vae_jax.reports import latent_space as latent_space_report


@dataclasses.dataclass(frozen=True)
class LatentSpaceConfig(latent_metrics.AEVAEConfig):
    tsne_latent_dim: int = field(20, "latent size of the second AE/VAE pair, shown by t-SNE (0: skip)")
    tsne_points: int = field(1000, "test points in the t-SNE")
    num_samples: int = field(1000, "z ~ N(0, I) draws (and test reconstructions) measured per model")
    grid_size: int = field(15, "decodings per side of the latent-plane grid")
    workdir: str = field("runs/latent_space", "output directory; one sub-workdir per model and latent size")

    def validate(self) -> None:
        super().validate()
        require(self.tsne_latent_dim >= 0, "tsne_latent_dim", "a non-negative integer", self.tsne_latent_dim)
        require(self.tsne_points >= 10, "tsne_points", "at least 10", self.tsne_points)
        require(self.num_samples > 0, "num_samples", "a positive integer", self.num_samples)
        require(self.grid_size >= 2, "grid_size", "at least 2", self.grid_size)


def train_pair(config, latent_dim: int, dataset) -> dict:
    """Trains (or resumes) the AE and VAE at ``latent_dim``; ``{kind: (model, params)}`` of the first seed."""
    configs = latent_metrics.matched_configs(config, latent_dim, config.workdir)
    trained = {}
    for kind in latent_metrics.MODEL_KINDS:
        model, task = latent_metrics.build_task(kind, configs[kind], dataset.image_shape)
        trained[kind] = (model, runner.train(configs[kind], task, dataset).params(0))
    return trained


@user_errors()
def main(argv=None) -> dict:
    config = parse_config(LatentSpaceConfig, argv, description=__doc__.split("\n\n")[0])
    sizes = [2] + ([config.tsne_latent_dim] if config.tsne_latent_dim not in (0, 2) else [])
    plans = [  # every sub-workdir is checked before any data is loaded
        workdir_lib.check_workdir(sub_config)
        for latent_dim in sizes
        for sub_config in latent_metrics.matched_configs(config, latent_dim, config.workdir).values()
    ]
    dataset = runner.load_data(config)
    distributed.log(f"data: {dataset.describe()}")
    if dataset.y_train is None:
        raise ConfigError(f"--dataset {config.dataset} has no labels; the latent plots are coloured by label")
    latent_metrics.import_sklearn_in_background(plans)  # its t-SNEs and classifier
    os.makedirs(config.workdir, exist_ok=True)
    workdir_lib.write_json(os.path.join(config.workdir, "config.json"), dataclasses.asdict(config))
    will_train = not all(plan.nothing_to_train for plan in plans)  # else the report is reused: no t-SNE
    with latent_views.analysis_threads(2) as pool:
        trained, tsne = {}, None
        for latent_dim in sorted(sizes, reverse=True):  # the t-SNEs' pair first: they run beside the 2-D training
            trained[latent_dim] = train_pair(config, latent_dim, dataset)
            if latent_dim != 2 and will_train and distributed.is_main_process():
                codes = {latent_dim: latent_space_report.encode_test_images(trained[latent_dim], dataset.x_test)}
                tsne = latent_space_report.submit_tsnes(pool, config, codes, len(dataset.x_test))
        trained_by_size = {latent_dim: trained[latent_dim] for latent_dim in sizes}
        return runner.report_on_main(
            config.workdir, lambda: latent_space_report.report(config, dataset, trained_by_size, tsne)
        )


if __name__ == "__main__":
    main()
