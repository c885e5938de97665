"""Encode a dataset with a trained model of any family and write the codes (and labels) as .npz.

    python -m experiments.encode --workdir runs/vae --dataset mnist --out codes.npz
    python -m experiments.encode --workdir runs/hvae/hvae --dataset mnist --split all --out codes.npz
    python -m experiments.encode --workdir runs/vqvae --dataset mnist --out codes.npz   # code-index grids

The codes are ``vae_jax.load_run(W).encode(x)``: posterior means ``z`` ``[N, D]`` (the HVAE: ``z1`` and ``z2``; the
conditional VAE encodes with the data's labels), the VQ-VAE's int32 code indices ``z`` ``[N, H/4, W/4]``, an
autoencoder's code ``z`` ``[N, D]``; ``y`` holds the labels when the data has them. ``--dataset`` is prepared as the
run trained; its images must have the model's size.
"""

from __future__ import annotations

import argparse

import numpy as np

from vae_jax import cli, trained
from vae_jax.cli import user_errors


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.DefaultsHelpFormatter)
    cli.add_run_flags(parser)
    cli.add_image_flags(parser, trained.SPLITS)
    parser.add_argument("--out", default="codes.npz", help="the .npz of codes (and labels)")
    return parser


@user_errors()
def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.check_out(parser, args.out, ".npz")
    run, spec, x, y = trained.run_and_images(args, "encodes")
    codes = run.encode(x, labels=y if run.conditional else None)
    arrays = dict(codes) if isinstance(codes, dict) else {"z": codes}
    if y is not None:
        arrays["y"] = y
    np.savez_compressed(args.out, **arrays)
    shapes = ", ".join(f"{name} {list(a.shape)} {a.dtype}" for name, a in arrays.items())
    print(f"{run.family} codes of {spec} ({args.split}, n={len(x)}): {shapes} -> {args.out}")
    return arrays


if __name__ == "__main__":
    main()
