"""Reconstruct images with a trained model of any family: originals above reconstructions, their errors printed.

    python -m experiments.reconstruct --workdir runs/vae --dataset mnist --n 16 --out recon.png
    python -m experiments.reconstruct --workdir runs/conv_vae --dataset folder:my_faces --split all --out faces.png
    python -m experiments.reconstruct --workdir cvae.msgpack --dataset mnist:embedded --out recon.png

The reconstructions are ``vae_jax.load_run(W).reconstruct(x)`` (decoded posterior means, the quantized grid of a
VQ-VAE, an autoencoder's output; the conditional VAE is given the data's labels). ``--dataset`` goes through
``vae_jax.data.load_dataset`` prepared as the run trained (its --binarize and --image-size); its images must have the
model's size. The result line (stdout) gives the mean squared error per pixel of each shown image and its mean over
the whole split.
"""

from __future__ import annotations

import argparse

import numpy as np

from vae_jax import cli, distributed, plots, trained
from vae_jax.cli import user_errors
from vae_jax.data import pixels_to_float


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.DefaultsHelpFormatter)
    cli.add_run_flags(parser)
    cli.add_image_flags(parser, trained.SPLITS)
    parser.add_argument("--n", type=int, default=16, help="images shown (the error is over the whole split)")
    parser.add_argument("--out", default="recon.png", help="the PNG: originals above reconstructions")
    return parser


@user_errors()
def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be a positive integer, got {args.n}")
    cli.check_out(parser, args.out, ".png")
    run, spec, x, y = trained.run_and_images(args, "reconstructs")
    x = pixels_to_float(x)
    recon = run.reconstruct(x, labels=y if run.conditional else None)
    errors = np.mean(np.square(recon - x), axis=(1, 2, 3))  # [N] per-pixel MSE of each image
    shown = min(args.n, len(x))
    if shown < args.n:
        distributed.log(f"--n {args.n}: the {args.split} split has {len(x)} images; showing them all")
    title = f"{spec} ({args.split}) and {run.family} reconstructions (MSE {errors.mean():.4f})"
    plots.save_reconstructions(x[:shown], recon[:shown], args.out, title)
    print(
        f"reconstruction MSE per pixel of the {shown} shown: {' '.join(f'{e:.4f}' for e in errors[:shown])}; "
        f"mean over the {args.split} split {errors.mean():.5f} (n={len(x)}) -> {args.out}"
    )
    return {"errors": errors, "mean_error": float(errors.mean()), "reconstructions": recon[:shown]}


if __name__ == "__main__":
    main()
