"""TensorBoard event files in a run's workdir: per-epoch train/test scalars (mean and per seed) and figures.

Written with ``tensorboardX`` (no TensorFlow needed); view with ``tensorboard --logdir runs/``. Tags:
``train/NAME`` and ``test/NAME`` (mean over seeds), ``train/NAME/seed_S`` and ``test/NAME/seed_S`` (each seed),
``figures/FILE`` (the run's PNG figures at its last epoch).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

# metrics.jsonl keys that are bookkeeping, not metrics.
_NOT_METRICS = ("epoch", "seconds", "per_seed")


class EpochWriter:
    """Writes one epoch's ``metrics.jsonl`` line as scalars, and figures as images, to ``logdir``."""

    def __init__(self, logdir: str):
        self._writer = _summary_writer_class()(logdir=logdir)

    def log_epoch(self, line: dict, seeds: Sequence[int]) -> None:
        """Scalars of one ``metrics.jsonl`` line (keys ``train_NAME``/``test_NAME``) at step ``line["epoch"]``."""
        step = int(line["epoch"])
        for key, value in line.items():
            if key not in _NOT_METRICS:
                self._writer.add_scalar(_tag(key), float(value), step)
        self._writer.add_scalar("time/epoch_seconds", float(line["seconds"]), step)
        for key, values in line.get("per_seed", {}).items():
            for seed, value in zip(seeds, values):
                self._writer.add_scalar(f"{_tag(key)}/seed_{seed}", float(value), step)
        self._writer.flush()

    def log_figures(self, paths: Sequence[str], step: int) -> None:
        """PNG figures as images (tag ``figures/FILE``)."""
        from PIL import Image

        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))  # [H, W, 3] uint8
            self._writer.add_image(
                f"figures/{os.path.splitext(os.path.basename(path))[0]}", pixels, step, dataformats="HWC"
            )
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _summary_writer_class():
    """``tensorboardX.SummaryWriter``, imported without PyTorch.

    tensorboardX imports PyTorch when it is installed, only to accept torch tensors (seconds of a run's
    start-up); unless PyTorch is already loaded, its import is made to fail for that moment (a ``None`` in
    ``sys.modules``), which tensorboardX handles as "no PyTorch".
    """
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _tag(key: str) -> str:
    split, _, name = key.partition("_")
    return f"{split}/{name}" if split in ("train", "test") and name else key
