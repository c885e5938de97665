"""Evaluate a trained VAE's newest checkpoint on a test split: ELBO, IWAE-k, bits/dim, active units.

    python -m experiments.evaluate --workdir runs/vae
    python -m experiments.evaluate --workdir runs/vae --iwae-k 5000 --out runs/vae/eval_k5000.json
    python -m experiments.evaluate --workdir runs/vae --dataset npz:other.npz

Writes JSON (default WORKDIR/eval.json) with n, neg_elbo, recon, kl (nats per
example), iwae_nll and iwae_k, bits_per_dim, active_units; for a run of
several seeds, each seed's numbers and their mean and standard deviation.
A fixed evaluation key makes repeated evaluations agree exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

from vae_jax import cli
from vae_jax import data as data_lib, evaluate, runner, tasks
from vae_jax.checkpoint import CheckpointError
from vae_jax.cli import ConfigError, user_errors


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workdir", required=True, help="workdir of an experiments.vae run")
    parser.add_argument("--dataset", default="", help="dataset spec to evaluate on (default: the run's)")
    parser.add_argument("--data-dir", default="", help="TFDS data directory (default: the run's)")
    parser.add_argument("--iwae-k", type=int, default=1000, help="importance samples per test image")
    parser.add_argument("--batch-size", type=int, default=100, help="test images per evaluation batch")
    parser.add_argument("--k-chunk", type=int, default=100, help="importance samples decoded at a time")
    parser.add_argument("--out", default="", help="output JSON file (default: WORKDIR/eval.json)")
    return parser


def trained_image_shape(workdir: str) -> tuple | None:
    """The image shape the run trained on, from its summary.json (None if it has none yet)."""
    path = os.path.join(workdir, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return tuple(json.load(f)["dataset"]["image_shape"])


@user_errors(ConfigError, data_lib.DataError, CheckpointError)
def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("iwae_k", "batch_size", "k_chunk"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    config = runner.load_run_config(args.workdir, tasks.VAEConfig)
    spec = args.dataset or config.dataset
    dataset = data_lib.load_dataset(spec, data_dir=(args.data_dir or config.data_dir) or None, binarize=config.binarize)
    trained_shape = trained_image_shape(args.workdir) or dataset.image_shape
    if dataset.image_shape != trained_shape:
        raise ConfigError(f"--dataset {spec}: images are {dataset.image_shape}, the model was trained on {trained_shape}")
    model, task = tasks.vae_task(config, trained_shape)
    epoch, state = runner.restore_state(config, task)

    per_seed = []
    for replica, seed in enumerate(config.seed_list()):
        params = jax.tree_util.tree_map(lambda a: a[replica], state.params)
        metrics = evaluate.evaluate_vae(model, params, dataset.x_test, config.likelihood, config.decoder_logvar,
                                        iwae_k=args.iwae_k, batch_size=args.batch_size, k_chunk=args.k_chunk)
        per_seed.append({"seed": seed, **metrics})
    result = {"workdir": args.workdir, "checkpoint_epoch": int(epoch), "dataset": dataset.summary(), **per_seed[0]}
    if len(per_seed) > 1:
        result["per_seed"] = per_seed
        for key in ("neg_elbo", "recon", "kl", "iwae_nll", "bits_per_dim", "active_units"):
            values = np.array([m[key] for m in per_seed], np.float64)
            result[key] = float(values.mean())
            result[f"{key}_std"] = float(values.std())
        del result["seed"]
    out = args.out or os.path.join(args.workdir, "eval.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"n={result['n']}  neg-ELBO {result['neg_elbo']:.2f}  IWAE-{args.iwae_k} NLL {result['iwae_nll']:.2f} nats  "
          f"({result['bits_per_dim']:.4f} bits/dim)  active units {result['active_units']}/{config.latent_dim}  -> {out}",
          file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
