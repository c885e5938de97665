"""Time the training path `experiments.vae` runs, beside a minimal flax + optax scan loop and PyTorch eager.

    python -m experiments.benchmark --out runs/benchmark.json                 # every section
    python -m experiments.benchmark --sections epoch,seeds --repeats 3        # some sections
    python -m experiments.benchmark --sections epoch --batch-sizes 128 --repeats 2  # quick look

All variants train the same model (784-400-20, Bernoulli decoder, Adam 1e-3) on the same data for one
epoch (N // batch steps), each continuing its own training after an untimed warm-up epoch
(``SteadyEpochs``). Each repeat times every variant once, in turn; the median over repeats is reported
(the JSON also keeps the minimum and every time). Sections (docs/benchmarks.md has what each measures):

  epoch    per-epoch seconds of ``runner_path`` (``runner.make_epoch``, the epoch ``experiments.vae``
           runs), ``minimal_scan_loop`` (a flax + optax ``lax.scan`` loop written here), the runner path
           unguarded (``--max-consecutive-skips 0``), ``vmapped_one_seed``, ``jit_step_loop`` and
           ``torch_eager`` when ``torch`` is importable; GFLOP/s beside a plain float32 matmul rate.
  conv     the default conv VAE at ``--conv-batch-size``: runner path, scan-fused epoch, PyTorch eager.
  profile  XLA's own time per op of the runner path and the minimal loop, grouped by kind.
  seeds    N = 1, 8, 32 seeds at batch 16 and 128: the vmapped seeds against N x one seed.
  target   seconds (and epochs) of the runner path to reach a test neg-ELBO.
  devices  the runner path on 1 and 8 simulated CPU devices (a subprocess).
  startup  whole-process seconds of ``experiments.vae`` with cold and warm caches, and of
           ``benchmarks.torch_vae`` when ``torch`` is importable (``--startup-rounds`` alternating runs).
  commands each training experiment's command (``COMMANDS``) as a whole process, from scratch with the
           phases it printed, then again with nothing left to train.
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks import processes, profiling, report, sections
from benchmarks.timing import machine, matmul_gflops, model_flops_per_example
from vae_jax import cli
from vae_jax import data as data_lib
from vae_jax.cli import user_errors

SECTIONS = ("epoch", "conv", "profile", "seeds", "target", "devices", "startup", "commands")


def make_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.DefaultsHelpFormatter)
    parser.add_argument("--dataset", default="mnist", help="dataset spec (28x28x1 images)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--batch-sizes", default="16,128,512", help="batch sizes of the epoch section")
    parser.add_argument("--profile-batch-size", type=int, default=128, help="batch size of the profile section")
    parser.add_argument("--seed-batch-sizes", default="16,128", help="batch sizes of the seeds section")
    parser.add_argument("--seeds", default="1,8,32", help="seed counts N of the seeds section")
    parser.add_argument("--conv-batch-size", type=int, default=128, help="batch size of the conv section")
    parser.add_argument(
        "--target-neg-elbo", type=float, default=125.0, help="test neg-ELBO (nats) of the target section"
    )
    parser.add_argument("--max-epochs", type=int, default=30, help="epoch limit of the target section")
    parser.add_argument("--startup-epochs", type=int, default=10, help="--epochs of the startup section's whole runs")
    parser.add_argument("--startup-rounds", type=int, default=3, help="alternating rounds of the startup section")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per variant (median reported)")
    parser.add_argument("--out", default="runs/benchmark.json", help="output JSON file")
    parser.add_argument("--devices-probe", action="store_true", help=argparse.SUPPRESS)
    return parser


def _int_list(parser, flag_name: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        parser.error(f"{flag_name} takes comma-separated positive integers, got {text!r}")
    return values


def parse_args(parser, argv) -> argparse.Namespace:
    """The flags, checked; ``sections``, ``batch_sizes``, ``seed_batch_sizes`` and ``seeds`` parsed into lists."""
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    if set(names) - set(SECTIONS) or not names:
        parser.error(f"--sections takes names from {', '.join(SECTIONS)}, got {args.sections!r}")
    args.sections = names
    for flag in ("--batch-sizes", "--seed-batch-sizes", "--seeds"):
        name = flag[2:].replace("-", "_")
        setattr(args, name, _int_list(parser, flag, getattr(args, name)))
    positive = ("repeats", "max_epochs", "startup_epochs", "startup_rounds", "profile_batch_size", "conv_batch_size")
    if min(getattr(args, name) for name in positive) <= 0:
        parser.error(
            "--repeats, --max-epochs, --startup-epochs, --startup-rounds, --profile-batch-size and --conv-batch-size "
            "must be positive"
        )
    return args


def check_out(parser, out: str) -> None:
    """``--out``'s folder is made and writable: checked before the long run, not after it."""
    out_dir = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        parser.error(f"--out {out}: cannot write ({err.strerror or type(err).__name__})")
    if not os.access(out_dir, os.W_OK):
        parser.error(f"--out {out}: cannot write (permission denied)")


def run_sections(args, dataset) -> dict:
    """The report: the machine, then each section of ``args.sections``, in the order of :data:`SECTIONS`."""
    x = dataset.x_train  # float32 in [0, 1], for the minimal loop and PyTorch
    pixels = dataset.train_pixels  # the stored form (uint8 for the digits), which runner.train puts on the device
    matmul = matmul_gflops()
    results = {
        "machine": machine(),
        "dataset": dataset.summary(),
        "matmul_gflops": matmul,
        "model_flops_per_example": model_flops_per_example(),
        "repeats": args.repeats,
        "timed_runner_path": "runner.make_epoch, the epoch runner.train (experiments.vae) runs",
    }
    run = {
        "epoch": lambda: sections.epoch_section(x, pixels, args.batch_sizes, args.repeats, matmul),
        "conv": lambda: sections.conv_section(x, pixels, args.conv_batch_size, args.repeats),
        "profile": lambda: profiling.profile_section(x, pixels, args.profile_batch_size),
        "seeds": lambda: sections.seeds_section(pixels, args.seed_batch_sizes, args.seeds, args.repeats),
        "target": lambda: sections.target_section(pixels, dataset.test_pixels, args.target_neg_elbo, args.max_epochs),
        "devices": lambda: sections.devices_section(args),
        "startup": lambda: processes.startup_section(args, args.startup_epochs, args.startup_rounds),
        "commands": lambda: processes.commands_section(args),
    }
    for name in SECTIONS:
        if name in args.sections:
            results[name] = run[name]()
    return results


@user_errors()
def main(argv=None) -> dict:
    parser = make_parser()
    args = parse_args(parser, argv)
    batch_size = max(args.batch_sizes + args.seed_batch_sizes + [args.profile_batch_size, args.conv_batch_size])
    dataset = data_lib.load_dataset(args.dataset, batch_size=batch_size)
    if dataset.image_shape != (28, 28, 1):
        parser.error(f"--dataset must have 28x28x1 images for the 784-400-20 model, got {dataset.image_shape}")
    if args.devices_probe:
        print("RESULT" + json.dumps(sections.devices_probe(dataset.train_pixels, args.batch_sizes[0], args.repeats)))
        return {}
    check_out(parser, args.out)
    results = run_sections(args, dataset)
    try:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    except OSError as err:
        parser.error(f"--out {args.out}: cannot write ({err.strerror or type(err).__name__})")
    report.print_table(results)
    return results


if __name__ == "__main__":
    main()
