"""A trained VAE's checkpoint (a workdir's, or an exported file's) evaluated on a test split: the run's family,
its data, the JSON and the result line of ``experiments.evaluate``."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from vae_jax import data as data_lib
from vae_jax import trained
from vae_jax.errors import ConfigError

# Workdirs of other kinds: what they hold and which command reports on them.
OTHER_KINDS = {
    "autoencoder": (
        "an autoencoder run (no likelihood to evaluate)",
        "its test MSE/PSNR are in summary.json; rerun python -m experiments.autoencoder --workdir {w} to refresh them",
    ),
    "linear_ae": (
        "a linear-autoencoder run of experiments.pca_vs_linear_ae (no likelihood to evaluate)",
        "its results are in summary.json; see python -m experiments.pca_vs_linear_ae --help",
    ),
}


def vae_config(workdir: str):
    """``(family, config)`` of ``workdir``'s VAE run, or a one-line error saying what the workdir holds instead."""
    kind = trained.run_kind(workdir)
    if kind in OTHER_KINDS:
        what, command = OTHER_KINDS[kind]
        raise ConfigError(f"--workdir {workdir} holds {what}; {command.format(w=workdir)}")
    if kind not in trained.VAE_KINDS:
        raise ConfigError(
            f"--workdir {workdir} holds a {kind!r} run; experiments.evaluate evaluates VAE runs "
            f"({', '.join(trained.VAE_KINDS)}); python -m experiments.reconstruct works on any run"
        )
    return trained.FAMILIES[kind], trained.load_config(workdir)[1]


@dataclasses.dataclass
class TrainedVAE:
    """What ``experiments.evaluate`` evaluates: a VAE's params ``[R, ...]`` (R seeds), where they came from,
    and the test data prepared as the run trained."""

    model: object
    task: object
    config: object
    epoch: int
    params: object
    seeds: list
    checkpoint_path: str
    dataset: data_lib.Dataset


def trained_vae(path: str, spec: str, data_dir: str, skip_unreadable=None) -> TrainedVAE:
    """The VAE run in workdir ``path`` (every seed, its newest good checkpoint) or in a file
    :func:`vae_jax.export_run` wrote (its one seed), with dataset ``spec`` (default: the run's own data)."""
    if os.path.isfile(path):
        run = trained.load_run(path)
        if run.family not in trained.VAE_KINDS:
            raise ConfigError(
                f"--workdir {path} is an exported {run.family} model; experiments.evaluate evaluates VAEs"
            )
        dataset = trained.run_dataset(
            run.config, path, spec, data_dir, skip_unreadable, run.data_record, run.image_shape
        )
        params = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], run.params)
        return TrainedVAE(
            run.model, run.task, run.config, run.epoch, params, [run.seed], os.path.abspath(path), dataset
        )
    family, config = vae_config(path)
    trained_shape = trained.trained_image_shape(config.workdir)
    dataset = trained.run_dataset(config, config.workdir, spec, data_dir, skip_unreadable, None, trained_shape)
    model, task = family.build(config, trained_shape or dataset.image_shape)
    epoch, state = trained.restore_checkpoint(config, task)
    checkpoint = os.path.join(os.path.abspath(config.workdir), "checkpoints", str(int(epoch)))
    return TrainedVAE(model, task, config, int(epoch), state.params, config.seed_list(), checkpoint, dataset)


def combine_seeds(result: dict, per_seed: list[dict]) -> dict:
    """``result`` with the first seed's numbers; for several seeds, each seed's and their mean and std."""
    result = {**result, **per_seed[0]}
    if len(per_seed) > 1:
        result["per_seed"] = per_seed
        scalar_keys = [
            k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and k not in ("seed", "n", "iwae_k")
        ]
        for key in scalar_keys:
            values = np.array([m[key] for m in per_seed], np.float64)
            result[key] = float(values.mean())
            result[f"{key}_std"] = float(values.std())
        result["active_units_per_layer"] = {
            layer: float(np.mean([m["active_units_per_layer"][layer] for m in per_seed]))
            for layer in per_seed[0]["active_units_per_layer"]
        }
        del result["seed"]
    return result


def result_line(result: dict, iwae_k: int, out: str) -> str:
    """The line ``experiments.evaluate`` prints: the checkpoint, the bounds and the active units."""
    word = "cross-entropy" if result["measure"].startswith("cross-entropy") else "NLL"
    units = ", ".join(f"{k} {result['active_units_per_layer'][k]:g}/{d}" for k, d in result["latent_dims"].items())
    extras = "".join(f", {k} {result[k]:.2f}" for k in ("kl_z1", "kl_z2") if k in result)
    bound = (
        f"  IWAE-{iwae_k} {word} {result['iwae_nll']:.2f} nats ({result['bits_per_dim']:.4f} bits/dim, {word})"
        if "iwae_nll" in result
        else ""
    )
    seeds = f" (mean of {len(result['per_seed'])} seeds; eval.json has each)" if "per_seed" in result else ""
    return (
        f"{result['kind']} checkpoint epoch {result['checkpoint_epoch']}{seeds}: n={result['n']}  neg-ELBO "
        f"{result['neg_elbo']:.2f} (recon {result['recon']:.2f}, KL {result['kl']:.2f}{extras}){bound}  active "
        f"units {units}  -> {out}"
    )
