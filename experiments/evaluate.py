"""Evaluate a trained VAE's newest checkpoint on a test split: ELBO, IWAE-k NLL, bits/dim, active units.

    python -m experiments.evaluate --workdir runs/vae
    python -m experiments.evaluate --workdir runs/hvae/hvae --iwae-k 5000 --out runs/hvae/hvae/eval_k5000.json
    python -m experiments.evaluate --workdir runs/vae --dataset npz:other.npz
    python -m experiments.evaluate --workdir runs/vae --iwae-k 5000 --devices all   # batches split over devices
    python -m experiments.evaluate --workdir cvae.msgpack      # a file vae_jax.export_run wrote: its one seed

Works for every VAE family (``vae``, ``conv_vae``, ``cvae`` conditioned on the true test label, ``hvae``), read
from the ``kind`` in the workdir's config.json, and for a file ``vae_jax.export_run`` wrote (its JSON goes beside it,
``NAME.eval.json``). Writes JSON (default WORKDIR/eval.json): the checkpoint, n, neg_elbo, recon, kl in nats per
example, iwae_nll, bits_per_dim, active units and ``measure`` (what the NLL is); for several seeds, each seed's
numbers and their mean and std. neg_elbo, recon and kl equal summary.json's for the same checkpoint and data (same
fixed key and batching); the IWAE bound has its own fixed key. docs/experiments/evaluate.md has the details.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

from vae_jax import cli, evaluate, parallel, trained
from vae_jax import workdir as workdir_lib
from vae_jax.cli import user_errors
from vae_jax.reports import evaluation


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.DefaultsHelpFormatter)
    parser.add_argument(
        "--workdir",
        required=True,
        default=argparse.SUPPRESS,
        help=f"workdir of a VAE training run (kinds: {', '.join(trained.VAE_KINDS)}), or a file vae_jax.export_run wrote",
    )
    parser.add_argument("--dataset", default="", help="dataset spec to evaluate on (default: the run's)")
    parser.add_argument("--data-dir", default="", help="TFDS data directory (default: the run's)")
    cli.add_skip_unreadable_flag(parser)
    parser.add_argument("--iwae-k", type=int, default=1000, help="importance samples per test image (0: no IWAE bound)")
    parser.add_argument("--batch-size", type=int, default=100, help="test images per IWAE batch")
    parser.add_argument("--k-chunk", type=int, default=100, help="importance samples decoded at a time")
    parser.add_argument(
        "--devices",
        default="1",
        help="'all' or a count N: each batch is split over N devices "
        "(they share the work; the same samples, the same results to float rounding)",
    )
    parser.add_argument(
        "--eval-seed",
        type=int,
        default=evaluate.EVAL_SEED,
        help="seed of the evaluation key (the default is the fixed key summary.json's test "
        "metrics use; TrainedModel.evaluate(key=S) gives the same numbers)",
    )
    parser.add_argument("--out", default="", help="output JSON file (default: WORKDIR/eval.json)")
    return parser


@user_errors()
def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "k_chunk"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.iwae_k < 0:
        parser.error(f"--iwae-k must be a non-negative integer (0: no IWAE bound), got {args.iwae_k}")
    sharding = parallel.eval_batch_sharding(args.devices)
    run = evaluation.trained_vae(args.workdir, args.dataset, args.data_dir, args.skip_unreadable)
    config, dataset, epoch = run.config, run.dataset, run.epoch
    parts = trained.FAMILIES[config.kind].model_cls.eval_parts(run.model, run.task, config)
    data = {"x": dataset.test_pixels}
    if parts.needs_labels:
        spec = args.dataset or config.dataset
        trained.check_dataset_labels(spec, dataset.y_test, run.model.num_classes, "is evaluated on -log p(x|y)")
        data["y"] = dataset.y_test

    # TrainedModel.evaluate (vae_jax.trained_model) runs this computation on one seed: the same numbers.
    per_seed = evaluate.evaluate_runs(
        parts,
        run.params,
        data,
        iwae_k=args.iwae_k,
        eval_batch_size=config.eval_batch_size,
        iwae_batch_size=args.batch_size,
        k_chunk=args.k_chunk,
        batch_sharding=sharding,
        key=jax.random.key(args.eval_seed),
    )
    per_seed = [{"seed": seed, **m} for seed, m in zip(run.seeds, per_seed, strict=True)]
    likelihood = config.resolved().likelihood if hasattr(config, "resolved") else config.likelihood  # conv presets
    measure = evaluate.likelihood_measure(likelihood, dataset.x_test)
    result = evaluation.combine_seeds(
        {
            "workdir": args.workdir,
            "kind": config.kind,
            "checkpoint_epoch": int(epoch),
            "checkpoint": {"epoch": int(epoch), "path": run.checkpoint_path},
            "eval_seed": args.eval_seed,
            "dataset": dataset.summary(),
            "measure": measure,
            "neg_elbo_note": (
                "single-sample neg-ELBO with the run's fixed evaluation key and --eval-batch-size "
                f"{config.eval_batch_size}: the same computation as summary.json's test metrics"
                if args.eval_seed == evaluate.EVAL_SEED
                else f"single-sample neg-ELBO with the key of --eval-seed {args.eval_seed} (summary.json's test "
                f"metrics use seed {evaluate.EVAL_SEED}) and --eval-batch-size {config.eval_batch_size}"
            ),
        },
        per_seed,
    )
    default_out = os.path.splitext(args.workdir)[0] + ".eval.json" if os.path.isfile(args.workdir) else None
    out = args.out or default_out or os.path.join(args.workdir, "eval.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    workdir_lib.write_json(out, result)
    print(evaluation.result_line(result, args.iwae_k, out))
    if measure.startswith("cross-entropy"):
        print("note: " + measure, file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
