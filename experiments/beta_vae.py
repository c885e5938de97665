"""A sweep of the MLP VAE over beta values, beta schedules and free bits, in one command.

    python -m experiments.beta_vae --betas 0.5,1,4,8 --epochs 20 --workdir runs/beta_vae
    python -m experiments.beta_vae --betas 1 --schedules constant,linear,cyclical --beta-warmup-steps 2000 \
        --beta-cycle-steps 1000 --free-bits-values 0,0.25 --workdir runs/beta_sched
    python -m experiments.beta_vae --betas 1,4 --epochs 2 --workdir /tmp/beta-local       # smoke test

Every combination of ``--betas`` x ``--schedules`` x ``--free-bits-values`` trains through the shared
runner in its own resumable sub-workdir (a complete ``experiments.vae`` run). The sweep's workdir gets
summary.json with a table per setting (also printed), kl_per_dim.png and traversals_<setting>.png
(docs/experiments/beta_vae.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import ClassVar

import numpy as np

from vae_jax import runner, schedules, tasks
from vae_jax import workdir as workdir_lib
from vae_jax.cli import parse_config, user_errors
from vae_jax.errors import field, require, require_list
from vae_jax.reports import beta_vae as beta_vae_report


@dataclasses.dataclass(frozen=True)
class BetaVAESweepConfig(tasks.VAEConfig):
    """The MLP VAE's flags, with --beta, --beta-schedule and --free-bits replaced by the lists to sweep."""

    kind: ClassVar[str] = "beta_vae_sweep"
    workdir: str = field("runs/beta_vae", "sweep directory: one sub-workdir per setting, the table, figures")
    betas: tuple[float, ...] = field((1.0, 4.0), "beta values to sweep (the end value of a schedule)")
    schedules: tuple[str, ...] = field(("constant",), "beta schedules to sweep: constant, linear, cyclical")
    free_bits_values: tuple[float, ...] = field((0.0,), "free-bits floors (nats per dimension) to sweep")
    traversal_dims: int = field(8, "latent dimensions (the highest-KL ones) shown in each traversal figure")

    def validate(self) -> None:
        defaults = tasks.VAEConfig()
        for name, lists in (("beta", "betas"), ("beta_schedule", "schedules"), ("free_bits", "free_bits_values")):
            require(
                getattr(self, name) == getattr(defaults, name),
                name,
                f"left out in a sweep (use --{lists.replace('_', '-')})",
                getattr(self, name),
            )
        super().validate()
        numbers = "comma-separated non-negative numbers like"
        require_list("betas", self.betas, lambda b: np.isfinite(b) and b >= 0, f"{numbers} 1,4")
        names = f"comma-separated names from {','.join(schedules.SCHEDULES)}"
        require_list("schedules", self.schedules, lambda s: s in schedules.SCHEDULES, names)
        require_list("free_bits_values", self.free_bits_values, lambda f: f >= 0, f"{numbers} 0,0.5")
        require(self.traversal_dims > 0, "traversal_dims", "a positive integer", self.traversal_dims)
        for setting in self.settings():
            setting.validate()  # e.g. --schedules linear needs --beta-warmup-steps

    def settings(self) -> list[tasks.VAEConfig]:
        """One :class:`tasks.VAEConfig` per combination, each with its own sub-workdir."""
        base = tasks.VAEConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(tasks.VAEConfig)})
        return [
            dataclasses.replace(
                base,
                beta=beta,
                beta_schedule=schedule,
                free_bits=free_bits,
                workdir=os.path.join(self.workdir, f"beta{beta:g}_{schedule}_fb{free_bits:g}"),
            )
            for beta, schedule, free_bits in itertools.product(self.betas, self.schedules, self.free_bits_values)
        ]


@user_errors()
def main(argv=None) -> dict:
    config = parse_config(BetaVAESweepConfig, argv, description=__doc__.split("\n\n")[0])
    for setting in config.settings():  # every sub-workdir is checked before any data is loaded
        workdir_lib.check_workdir(setting)
    dataset = runner.load_data(config)
    trained = []
    for setting in config.settings():
        model, task = tasks.vae_task(setting, dataset.image_shape)
        trained.append((setting, model, runner.train(setting, task, dataset)))
    return runner.report_on_main(config.workdir, lambda: beta_vae_report.report(config, dataset, trained))


if __name__ == "__main__":
    main()
