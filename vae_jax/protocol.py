"""What a model family hands the driver (:class:`Task`) and the flags every training run shares (:class:`TrainConfig`).

This module is light (NumPy only, through :mod:`vae_jax.data`'s constants): a family module
(``vae_jax/tasks/*``) imports it, never the driver, so ``import vae_jax.tasks`` loads neither Orbax nor
tqdm nor TensorFlow.

The contracts a family's functions keep:

* ``loss_fn(params, batch, key, step) -> (loss, metrics)``: ``batch`` is ``{"x": float32 [B, ...], "y": [B]}``
  (pixels already in [0, 1]), ``loss`` a scalar (the batch mean), ``metrics`` a dict of scalars;
  with ``update_fn`` it returns ``(loss, (metrics, aux))``.
* ``eval_fn(params, batch, key) -> dict of [B]``: per-example test metrics; the driver averages them.
* the step metrics are reduced over an epoch by :func:`vae_jax.train.epoch_mean` on every path.

Layers (lowest first). A module imports only from its own layer or the layers below it (checked by
``tests/test_imports.py``, which holds the same table as data):

======== =====================================================================================================
layer    modules
======== =====================================================================================================
base     ``errors`` (user errors, config-field helpers), ``arrays`` (pixels to floats, arrays to the host),
         ``compiling`` (user cache dir, the XLA cache switch, ``jit_run_once``; no run state),
         ``phases`` (where a command's time goes)
maths    ``ops``, ``losses``, ``quantize``, ``schedules``, ``objectives``, ``penalties``, ``corruption``,
         ``evaluate``, ``diagnostics``, ``precision`` (the compute dtype policy), ``models/*``
data     ``data`` and ``data.*`` (dataset specs to arrays; one module per source; decode-once; cached arrays)
protocol ``protocol`` (:class:`Task`, :class:`TrainConfig`, the optimizer flags)
families ``tasks/*`` (each with its trained model), ``trained_model`` (the interface they share), ``linear_ae``,
         ``classifier``, ``latent_metrics``, ``latent_views``
step     ``train`` (train state, the step, the epoch, the optimizer from the config)
driver   ``runner`` (the training driver), ``workdir`` (a workdir's safety checks and records), ``parallel``,
         ``streaming``, ``faults``, ``distributed``, ``checkpoint``, ``tensorboard``, ``plots``, ``trained``
         (a trained run as one object: ``load_run``, ``export_run``)
reports  ``reports/*`` (what an experiment measures and draws once its runs are trained, one module per study)
cli      ``cli`` (argparse; ``parse_config``, ``user_errors``)
package  ``vae_jax`` itself (re-exports; ``load_run`` and ``export_run`` imported when first used)
======== =====================================================================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

from vae_jax.data import BINARIZE_CHOICES, MAX_IMAGE_SIZE
from vae_jax.errors import ConfigError, field, require

LR_SCHEDULES = ("constant", "cosine", "warmup_cosine")
EPOCH_LOOPS = ("auto", "scan", "steps")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Flags shared by every training experiment; ``kind`` (a class attribute, not a flag) names the model family
    in ``config.json``."""

    kind: ClassVar[str] = "train"
    dataset: str = field(
        "mnist",
        "dataset spec: mnist (full MNIST from TFDS, else the 5,000 embedded digits), "
        "mnist:embedded (those digits, no TFDS check), tfds:NAME, npz:PATH or folder:PATH",
    )
    image_size: int = field(0, "resize the shorter image side to N and crop the centre N x N (0: keep the size)")
    data_dir: str = field("", "TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    binarize: str = field("none", "pixel binarization", choices=BINARIZE_CHOICES)
    skip_unreadable: bool = field(
        False,
        "folder:PATH datasets leave out image files that cannot be read or "
        "decoded (listed on stderr and in summary.json) instead of stopping",
    )
    batch_size: int = field(128, "training batch size")
    epochs: int = field(30, "number of epochs to train")
    learning_rate: float = field(1e-3, "Adam learning rate (the peak of a schedule)")
    lr_schedule: str = field(
        "constant",
        "learning rate over the optimizer steps: constant, cosine decay to 0, or a "
        "linear warmup from 0 for --warmup-steps then cosine decay",
        choices=LR_SCHEDULES,
    )
    warmup_steps: int = field(0, "optimizer steps of linear warmup (--lr-schedule warmup_cosine)")
    decay_steps: int = field(
        0,
        "optimizer steps over which a cosine schedule decays, warmup included (0: --epochs "
        "times the steps per epoch; raising --epochs on resume then stretches the schedule)",
    )
    grad_clip: float = field(0.0, "clip the gradients to this global norm before Adam (0: no clipping)")
    weight_decay: float = field(0.0, "decoupled weight decay, AdamW (0: plain Adam)")
    seed: int = field(0, "root seed of the run")
    seeds: str = field(
        "",
        "train several replicas at once: a count N (seeds SEED..SEED+N-1) or a list like 0,3,7 "
        "(default: one replica, --seed)",
    )
    workdir: str = field("runs/vae", "output directory: config, metrics, checkpoints, figures")
    resume: bool = field(
        True,
        "continue from the newest checkpoint in the workdir; --no-resume refuses a workdir "
        "that holds a run unless --overwrite is given",
    )
    overwrite: bool = field(
        False,
        "start afresh even if the workdir holds a run: that run (checkpoints, records, "
        "figures, eval.json) is moved into WORKDIR/replaced-YYYYmmdd-HHMMSS/; nothing is "
        "deleted",
    )
    checkpoint_every: int = field(5, "save a checkpoint every N epochs (and at the end)")
    keep_checkpoints: int = field(3, "how many of the newest checkpoints to keep")
    eval_batch_size: int = field(500, "batch size for test-set evaluation")
    max_consecutive_skips: int = field(
        20,
        "skip optimizer steps whose loss or gradients are not finite, and stop the run after this many "
        "in a row (0: no step-level guard; the run stops at the end of an epoch with a non-finite loss)",
    )
    progress: bool | None = field(
        None,
        "show a progress bar on stderr (default: only when stderr is a terminal; "
        "a redirected log gets one line per epoch instead)",
    )
    # Devices, speed and monitoring (vae_jax.parallel, vae_jax.compiling, vae_jax.tensorboard).
    devices: str = field("1", "devices to train on: a count N or 'all' (batch split over them, seeds too)")
    epoch_loop: str = field(
        "auto",
        "how an epoch's steps run: one compiled lax.scan (scan), a Python loop over the "
        "jitted step (steps), or auto: steps on CPU for models with convolutions, which XLA:CPU "
        "runs several times slower inside a compiled loop",
        choices=EPOCH_LOOPS,
    )
    compile_cache: bool = field(
        True, "keep compiled XLA programs in the user cache dir (VAE_JAX_CACHE_DIR, else ~/.cache/vae_jax; in xla/)"
    )
    tensorboard: bool = field(True, "write TensorBoard scalars and figures to the workdir")
    stream: bool = field(
        False,
        "stream batches from host memory (Grain) instead of keeping the training split on "
        "the device; automatic when it would fill more than half the device's memory",
    )
    distributed: bool = field(
        False,
        "one of several processes (hosts) of a run: jax.distributed.initialize() "
        "from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID",
    )

    def validate(self) -> None:
        positive_number = math.isfinite(self.learning_rate) and self.learning_rate > 0
        checks = (  # (condition, field, what it must be), in the order they are reported
            (self.batch_size > 0, "batch_size", "a positive integer"),
            (
                0 <= self.image_size <= MAX_IMAGE_SIZE,
                "image_size",
                f"0 (keep the images' size) or a side length from 1 to {MAX_IMAGE_SIZE} pixels",
            ),
            (self.epochs > 0, "epochs", "a positive integer"),
            (positive_number, "learning_rate", "a positive number"),
            (self.warmup_steps >= 0, "warmup_steps", "a non-negative integer"),
            (
                self.warmup_steps == 0 or self.lr_schedule == "warmup_cosine",
                "warmup_steps",
                "0 unless --lr-schedule warmup_cosine",
            ),
            (self.decay_steps >= 0, "decay_steps", "a non-negative integer"),
            (
                self.decay_steps == 0 or self.decay_steps > self.warmup_steps,
                "decay_steps",
                f"0 or more than --warmup-steps {self.warmup_steps}",
            ),
            (math.isfinite(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "0 (off) or a positive number"),
            (
                math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                "weight_decay",
                "0 (off) or a positive number",
            ),
            (self.checkpoint_every > 0, "checkpoint_every", "a positive integer"),
            (self.keep_checkpoints > 0, "keep_checkpoints", "a positive integer"),
            (self.eval_batch_size > 0, "eval_batch_size", "a positive integer"),
            (self.max_consecutive_skips >= 0, "max_consecutive_skips", "a non-negative integer"),
            (bool(self.workdir), "workdir", "a directory path"),
        )
        for condition, name, expected in checks:
            require(condition, name, expected, getattr(self, name))
        self.seed_list()  # raises on a malformed --seeds

    def seed_list(self) -> list[int]:
        """The replicas' seeds: ``[seed]``, ``seed..seed+N-1`` for ``--seeds N``, or the list given."""
        text = self.seeds.strip()
        if not text:
            return [self.seed]
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--seeds must be a count N or a list like 0,3,7, got {self.seeds!r}") from None
        if "," not in text:
            require(values[0] > 0, "seeds", "a positive count", self.seeds)
            return list(range(self.seed, self.seed + values[0]))
        require(len(set(values)) == len(values), "seeds", "a list of distinct seeds", self.seeds)
        return values


@dataclasses.dataclass(frozen=True)
class Task:
    """How to initialise, train and evaluate one model.

    Attributes:
      init_params: ``key -> params``.
      loss_fn: ``(params, batch, key, step) -> (loss, metrics)``; batch is ``{"x": ..., "y": ...}``.
        With ``update_fn`` it returns ``(loss, (metrics, aux))``.
      eval_fn: ``(params, batch, key) -> dict of [B]`` per-example test metrics.
      headline: the eval metric shown in the progress bar.
      update_fn: optional non-gradient update after each optimizer step,
        ``(params, model_state, aux, step, key) -> (params, model_state, metrics)``.
      init_model_state: optional ``params -> model_state``, the state ``update_fn`` keeps.
      optimizer: optional ``optax.GradientTransformation`` replacing the one the config's flags build.
      not_trained: optional ``params -> pytree of bool`` (a prefix of the params' structure): True marks
        params that ``update_fn`` alone sets (the VQ-VAE's EMA codebook); the optimizer leaves them alone.
    """

    init_params: Callable
    loss_fn: Callable
    eval_fn: Callable
    headline: str
    update_fn: Callable | None = None
    init_model_state: Callable | None = None
    optimizer: Any = None
    not_trained: Callable | None = None
