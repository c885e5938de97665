"""Train a two-level hierarchical VAE beside a one-level VAE of about the same parameter count, and compare them.

    python -m experiments.hvae --epochs 30 --workdir runs/hvae
    python -m experiments.hvae --epochs 2 --workdir /tmp/hvae-local     # smoke test

The hierarchical VAE (x -> z1 -> z2, see vae_jax.models.hvae) trains in
WORKDIR/hvae; the one-level MLP VAE, with z of the size of z1 and hidden
widths scaled so its parameter count is the closest to the hierarchical
model's, trains in WORKDIR/vae with the same objective flags, data, batch
size, epochs and seeds. Both are then evaluated on the test split: neg-ELBO
(single sample, as in summary.json), KL per layer and per dimension, and
active units per layer on every test image; the IWAE-k NLL with k = 500 on
``--iwae-examples`` test images (500 by default, a fixed random subset, the
same images for both models, with the standard error of the paired difference;
``--iwae-examples 0`` for all of them; for more samples run ``python -m
experiments.evaluate --workdir WORKDIR/hvae --iwae-k 5000``).

Outputs: WORKDIR/comparison.json (both models' parameter counts, test metrics and collapse
diagnostics), kl_per_dim.png, samples.png (ancestral samples of both), reconstructions.png; each
sub-workdir holds its own config.json, metrics.jsonl, summary.json and checkpoints/. The matched VAE,
the evaluation and the figures are in :mod:`vae_jax.reports.hvae`.
"""

from __future__ import annotations

import dataclasses
import os

from vae_jax import distributed, runner
from vae_jax import workdir as workdir_lib
from vae_jax.cli import parse_config, user_errors
from vae_jax.errors import field, require
from vae_jax.reports import hvae as hvae_report
from vae_jax.reports.hvae import EVAL_IWAE_K
from vae_jax.tasks import hvae
from vae_jax.tasks import vae as vae_tasks


@dataclasses.dataclass(frozen=True)
class HVAEComparisonConfig(hvae.HVAEConfig):
    """The hierarchical VAE's flags and the comparison's own (which the trained runs do not record)."""

    iwae_examples: int = field(
        500, f"test images in the IWAE-{EVAL_IWAE_K} bound: a fixed random subset, the same for both models (0: all)"
    )

    def validate(self) -> None:
        super().validate()
        require(self.iwae_examples >= 0, "iwae_examples", "a non-negative integer (0: all)", self.iwae_examples)

    def training_config(self) -> hvae.HVAEConfig:
        return hvae.HVAEConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(hvae.HVAEConfig)})


@user_errors()
def main(argv=None) -> dict:
    flags = parse_config(HVAEComparisonConfig, argv, description=__doc__.split("\n\n")[0])
    top_workdir = flags.workdir
    dataset = runner.load_data(flags)
    config = dataclasses.replace(flags.training_config(), workdir=os.path.join(top_workdir, "hvae"))
    vae_config, vae_params, hvae_params = hvae_report.matched_vae_config(config, dataset.image_shape)
    vae_config = dataclasses.replace(vae_config, workdir=os.path.join(top_workdir, "vae"))

    h_model, h_task = hvae.hvae_task(config, dataset.image_shape)
    v_model, v_task = vae_tasks.vae_task(vae_config, dataset.image_shape)
    distributed.log("training the hierarchical VAE")
    h_result = runner.train(config, h_task, dataset)
    distributed.log("training the one-level VAE")
    v_result = runner.train(vae_config, v_task, dataset)
    trained = {"hvae": (h_model, h_task, h_result, hvae_params), "vae": (v_model, v_task, v_result, vae_params)}
    return runner.report_on_main(
        top_workdir, lambda: report(config, vae_config, top_workdir, dataset, trained, flags.iwae_examples)
    )


def report(config, vae_config, top_workdir: str, dataset, trained: dict, iwae_examples: int) -> dict:
    """The evaluation, figures, ``comparison.json`` and the result lines (process 0 alone); returns the comparison.

    ``trained`` maps ``hvae`` and ``vae`` to ``(model, task, TrainResult, parameter count)``. A rerun whose
    checkpoints, data and settings match those of ``comparison.json`` reuses it and its figures.
    """
    path = os.path.join(top_workdir, "comparison.json")
    settings = {
        "hvae": dataclasses.asdict(config),
        "vae": dataclasses.asdict(vae_config),
        "iwae_k": EVAL_IWAE_K,
        "iwae_examples": iwae_examples,
    }
    fingerprint = workdir_lib.report_fingerprint(
        {name: result.params(0) for name, (_, _, result, _) in trained.items()},
        {**settings, "dataset": dataset.summary()},
    )
    comparison = workdir_lib.reuse_or_compute(
        path,
        fingerprint,
        lambda: (hvae_report.compare(config, vae_config, top_workdir, dataset, trained, iwae_examples), None),
    )
    hvae_report.print_results(comparison, dataset, top_workdir)
    return comparison


if __name__ == "__main__":
    main()
