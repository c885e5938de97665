"""Draw samples from a trained model of any family: a PNG grid and, beside it, the arrays as .npz.

    python -m experiments.generate --workdir runs/vae --n 64 --out samples.png
    python -m experiments.generate --workdir runs/cvae --n 20 --label 3 --out threes.png
    python -m experiments.generate --workdir runs/cvae --n 40 --labels 3,7 --temperature 0.8 --out 3s_7s.png
    python -m experiments.generate --workdir runs/vqvae --n 64 --key 1 --out vq.png   # through its PixelCNN prior
    python -m experiments.generate --workdir cvae.msgpack --n 20 --label 3 --out threes.png  # an exported file

``--workdir`` is a training run's workdir (the family is read from its config.json) or a file ``vae_jax.export_run``
wrote. The samples are ``vae_jax.load_run(W).sample(n, key, labels, temperature)``: the same key (``--key K`` is
``jax.random.key(K)``) gives the same images. With ``--labels 3,7`` the n samples are split between the labels in
order. Writes OUT (the grid) and OUT with .npz (``x`` ``[n, H, W, C]`` in [0, 1], ``y`` the labels when there are
some); the result line goes to stdout.
"""

from __future__ import annotations

import argparse
import math
import os
import warnings

import numpy as np

from vae_jax import cli, distributed, plots, trained
from vae_jax.cli import user_errors
from vae_jax.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.DefaultsHelpFormatter)
    cli.add_run_flags(parser)
    parser.add_argument("--n", type=int, default=64, help="number of samples")
    parser.add_argument("--label", type=int, default=None, help="the class of every sample (conditional VAE)")
    parser.add_argument(
        "--labels",
        type=cli.int_list("labels"),
        default=None,
        metavar="N,N,...",
        help="classes to split the samples between (conditional VAE)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="scales the prior's std (Gaussian latents) or divides its logits (VQ-VAE prior)",
    )
    parser.add_argument("--key", type=int, default=0, help="seed of the sampling key")
    parser.add_argument("--out", default="samples.png", help="the PNG grid (the .npz goes beside it)")
    return parser


def requested_labels(args) -> np.ndarray | None:
    """``[n]`` labels: --label for all, or --labels split in order (None when neither is given)."""
    if args.label is not None:
        return np.full(args.n, args.label)
    if args.labels:
        return np.repeat(np.asarray(args.labels), -(-args.n // len(args.labels)))[: args.n]
    return None


@user_errors()
def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be a positive integer, got {args.n}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        parser.error(f"--temperature must be a positive number (1: the model's prior), got {args.temperature}")
    if args.label is not None and args.labels is not None:
        parser.error("--label and --labels: give one of them")
    if args.labels is not None and not args.labels:
        parser.error("--labels takes comma-separated integers like 3,7, got none")
    cli.check_out(parser, args.out, ".png")
    labels = requested_labels(args)
    run = trained.load_run(args.workdir, seed=args.seed, epoch=args.epoch)
    if run.conditional and labels is None:
        raise ConfigError(
            f"--label/--labels: {args.workdir} is a conditional VAE; give the classes to draw "
            f"(0 to {run.model.num_classes - 1})"
        )
    if labels is not None and not run.conditional:
        raise ConfigError(
            f"--label/--labels: {args.workdir} holds a model of kind {run.family}, which is not conditional"
        )
    if labels is not None and (labels.min() < 0 or labels.max() >= run.model.num_classes):
        flag, got = ("--label", args.label) if args.label is not None else ("--labels", ",".join(map(str, args.labels)))
        raise ConfigError(f"{flag}: {args.workdir} was trained on classes 0 to {run.model.num_classes - 1}, got {got}")
    with warnings.catch_warnings(record=True) as caught:  # a VQ-VAE without a prior: one line, not a traceback
        warnings.simplefilter("always")
        x = run.sample(args.n, args.key, labels=labels, temperature=args.temperature)
    for warning in caught:
        distributed.log(f"warning: {warning.message}")
    ignored = any("temperature ignored" in str(warning.message) for warning in caught)  # no prior to scale
    temperature = f"temperature {args.temperature:g}" + (" ignored" if ignored else "")
    npz = os.path.splitext(args.out)[0] + ".npz"
    what = "" if labels is None else f", labels {','.join(map(str, dict.fromkeys(labels.tolist())))}"
    title = f"{args.n} samples of {run.family} (epoch {run.epoch}, seed {run.seed}{what}, T={args.temperature:g})"
    plots.save_grid(x, args.out, title, ncols=min(args.n, 10))
    arrays = {"x": np.asarray(x, np.float32)} if labels is None else {"x": np.asarray(x, np.float32), "y": labels}
    np.savez_compressed(npz, **arrays)
    print(
        f"{args.n} samples from {args.workdir} ({run.family}, epoch {run.epoch}, seed {run.seed}{what}, "
        f"key {args.key}, {temperature}) -> {args.out}, {npz}"
    )
    return {"x": x, "y": labels, "png": args.out, "npz": npz}


if __name__ == "__main__":
    main()
