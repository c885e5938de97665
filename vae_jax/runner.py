"""The shared training driver behind every experiment.

:func:`train` takes a config (a :class:`TrainConfig` subclass) and a
:class:`Task` (how to initialise, train and evaluate one model) and does the
rest the same way for every experiment: loads the data once onto the device,
trains R independent replicas (seeds) as one vmapped, jitted, scan-fused
program, evaluates the test split every epoch, writes ``config.json``,
``metrics.jsonl`` and ``summary.json``, saves Orbax checkpoints and resumes
from the newest one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from vae_jax import (caches, checkpoint, data as data_lib, distributed, evaluate, parallel, plots, streaming,
                     tensorboard, train as train_lib)
from vae_jax.cli import ConfigError, field, flag, require

# Fields that may differ between a run and its resumption.
RESUMABLE_FIELDS = frozenset(
    {"epochs", "resume", "progress", "checkpoint_every", "keep_checkpoints", "workdir", "data_dir", "eval_batch_size"}
    # How a run is laid out and watched does not change what it computes (up to float reduction order).
    | {"devices", "seed_layout", "compile_cache", "tensorboard", "distributed", "stream"}
)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Flags shared by every training experiment.

    ``kind`` (a class attribute, not a flag) names the model family; it is
    written into ``config.json`` so a workdir says what it holds and
    :func:`load_run_config` can tell a user which command fits it.
    """

    kind: ClassVar[str] = "train"
    dataset: str = field("mnist", "dataset spec: mnist, tfds:NAME or npz:PATH")
    data_dir: str = field("", "TFDS data directory (default: TFDS's own)")
    binarize: str = field("none", "pixel binarization", choices=data_lib.BINARIZE_CHOICES)
    batch_size: int = field(128, "training batch size")
    epochs: int = field(30, "number of epochs to train")
    learning_rate: float = field(1e-3, "Adam learning rate")
    seed: int = field(0, "root seed of the run")
    seeds: str = field("", "train several replicas at once: a count N (seeds SEED..SEED+N-1) or a list like 0,3,7")
    workdir: str = field("runs/vae", "output directory: config, metrics, checkpoints, figures")
    resume: bool = field(True, "continue from the newest checkpoint in the workdir")
    checkpoint_every: int = field(5, "save a checkpoint every N epochs (and at the end)")
    keep_checkpoints: int = field(3, "how many of the newest checkpoints to keep")
    eval_batch_size: int = field(500, "batch size for test-set evaluation")
    progress: bool = field(True, "show a progress bar")
    # Devices, speed and monitoring (vae_jax.parallel, vae_jax.compile_cache, vae_jax.tensorboard).
    devices: str = field("1", "devices to train on: a count N or 'all' (batch split over them, seeds too)")
    seed_layout: str = field("auto", "how several seeds share a device: one vmapped program, a loop, or auto",
                             choices=parallel.SEED_LAYOUTS)
    compile_cache: bool = field(True, "keep compiled XLA programs in the user cache dir (~/.cache/vae_jax/xla)")
    tensorboard: bool = field(True, "write TensorBoard scalars and figures to the workdir")
    stream: bool = field(False, "stream batches from host memory (Grain) instead of keeping the training split on "
                         "the device; automatic when it would fill more than half the device's memory")
    distributed: bool = field(False, "one of several processes (hosts) of a run: jax.distributed.initialize() "
                              "from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID")

    def validate(self) -> None:
        require(self.batch_size > 0, "batch_size", "a positive integer", self.batch_size)
        require(self.epochs >= 0, "epochs", "a non-negative integer", self.epochs)
        require(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            "learning_rate", "a positive number", self.learning_rate,
        )
        require(self.checkpoint_every > 0, "checkpoint_every", "a positive integer", self.checkpoint_every)
        require(self.keep_checkpoints > 0, "keep_checkpoints", "a positive integer", self.keep_checkpoints)
        require(self.eval_batch_size > 0, "eval_batch_size", "a positive integer", self.eval_batch_size)
        require(bool(self.workdir), "workdir", "a directory path", self.workdir)
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
        ``(params, model_state, aux, step, key) -> (params, model_state, metrics)``
        (see :func:`vae_jax.train.make_train_step`).
      init_model_state: optional ``params -> model_state``, the state ``update_fn`` keeps.
    """

    init_params: Callable
    loss_fn: Callable
    eval_fn: Callable
    headline: str
    update_fn: Callable | None = None
    init_model_state: Callable | None = None


@dataclasses.dataclass
class TrainResult:
    state: train_lib.TrainState  # replicated: every leaf has a leading [R] axis
    seeds: list[int]
    dataset: data_lib.Dataset
    history: list[dict]
    test_metrics: dict[str, np.ndarray]  # per-example test metrics, [R, N] each
    summary: dict[str, Any]

    def params(self, replica: int = 0):
        """The params of one replica (a plain pytree)."""
        return jax.tree_util.tree_map(lambda a: a[replica], self.state.params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    return optax.adam(config.learning_rate)


def load_data(config: TrainConfig) -> data_lib.Dataset:
    return data_lib.load_dataset(
        config.dataset, data_dir=config.data_dir or None, binarize=config.binarize, batch_size=config.batch_size
    )


def device_data(dataset_split_x: np.ndarray, labels: np.ndarray | None) -> dict:
    data = {"x": jnp.asarray(dataset_split_x)}
    if labels is not None:
        data["y"] = jnp.asarray(labels)
    return data


def _check_workdir_config(workdir: str, config: TrainConfig) -> None:
    """Refuses to resume a run whose saved config differs in anything but resumable fields."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    saved_kind = saved.pop("kind", config.kind)
    if saved_kind != config.kind:
        raise ConfigError(f"--workdir {workdir} holds a {saved_kind} run, not a {config.kind} run; use another --workdir")
    current = dataclasses.asdict(config)
    changed = sorted(
        k for k in set(saved) | set(current)
        if k not in RESUMABLE_FIELDS and _jsonable(saved.get(k)) != _jsonable(current.get(k))
    )
    if changed:
        raise ConfigError(
            f"--workdir {workdir} holds a run with other settings ({', '.join(flag(k) for k in changed)}); "
            "use another --workdir or --no-resume"
        )


def config_record(config: TrainConfig) -> dict:
    """What ``config.json`` holds: the family's ``kind`` and every field of the config."""
    return {"kind": config.kind, **dataclasses.asdict(config)}


def _jsonable(value):
    return json.loads(json.dumps(value))


def _write_json(path: str, obj) -> None:
    if not distributed.is_main_process():  # one writer per run
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _read_history(path: str, upto_epoch: int) -> list[dict]:
    """metrics.jsonl lines of epochs <= upto_epoch (later lines belong to a lost run)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return [line for line in lines if line["epoch"] <= upto_epoch]


def mean_std(values) -> dict:
    """Mean, std (ddof 0) and the 95% Student-t interval of the mean over seeds (None for one seed).

    The interval is ``mean ± t_{0.975, R-1} s / sqrt(R)`` with ``s`` the sample std (ddof 1).
    """
    values = np.asarray(values, np.float64)
    ci95 = None
    if values.size > 1:
        from scipy import stats

        half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
        ci95 = [float(values.mean() - half), float(values.mean() + half)]
    return {"mean": float(values.mean()), "std": float(values.std()), "ci95": ci95, "per_seed": values.tolist()}


def load_run_config(workdir: str, config_cls):
    """The config a run in ``workdir`` was trained with (from its ``config.json``)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"--workdir {workdir}: no config.json here; is it the workdir of a training run?")
    with open(path) as f:
        saved = json.load(f)
    saved_kind = saved.pop("kind", config_cls.kind)
    if saved_kind != config_cls.kind:
        raise ConfigError(f"--workdir {workdir} holds a {saved_kind} run, not a {config_cls.kind} run")
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(saved) - set(known))
    if unknown:
        raise ConfigError(
            f"--workdir {workdir}: config.json has settings this experiment does not know ({', '.join(unknown)})"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    return config_cls(**values)


def restore_state(config: TrainConfig, task: Task) -> tuple[int, train_lib.TrainState]:
    """The newest checkpointed train state (all replicas) of the run ``config`` describes."""
    manager = checkpoint.make_manager(config.workdir)
    if manager.latest_step() is None:
        raise checkpoint.CheckpointError(f"--workdir {config.workdir}: no checkpoint to restore")
    optimizer = make_optimizer(config)
    keys = jax.vmap(train_lib.run_keys)(jnp.asarray(config.seed_list()))
    template = train_lib.init_replicated_state(task.init_params, optimizer, keys.init, task.init_model_state)
    return checkpoint.restore_latest(manager, template)


def train(config: TrainConfig, task: Task, dataset: data_lib.Dataset | None = None) -> TrainResult:
    """Trains ``task`` as configured, resuming from the workdir's newest checkpoint."""
    start_time = time.time()
    if config.distributed:  # before anything touches a device
        distributed.initialize()
    if config.compile_cache:  # before anything compiles
        caches.enable_compilation_cache()
    seeds = config.seed_list()
    dataset = load_data(config) if dataset is None else dataset
    workdir = config.workdir
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise ConfigError(f"--workdir {workdir}: not a writable directory ({err.strerror or type(err).__name__})") from None
    metrics_path = os.path.join(workdir, "metrics.jsonl")

    optimizer = make_optimizer(config)
    keys = jax.vmap(train_lib.run_keys)(jnp.asarray(seeds))
    state = train_lib.init_replicated_state(task.init_params, optimizer, keys.init, task.init_model_state)

    distributed.wait_for_all("train_start")  # before the first collective (Orbax's directory sync)
    manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
    start_epoch = 0
    if config.resume:
        if manager.latest_step() is not None:
            _check_workdir_config(workdir, config)
        start_epoch, state = checkpoint.restore_latest(manager, state)
    elif manager.latest_step() is not None:
        for step in manager.all_steps():
            manager.delete(step)
    history = _read_history(metrics_path, start_epoch)
    if distributed.is_main_process():
        with open(metrics_path, "w") as f:  # drop lines of epochs that were never checkpointed
            f.writelines(json.dumps(line) + "\n" for line in history)
    _write_json(os.path.join(workdir, "config.json"), config_record(config))

    stream = streaming.should_stream(config.stream, dataset.x_train.nbytes)  # host-side batches: vae_jax.streaming
    if stream and jax.process_count() > 1:
        raise ConfigError("--stream does not work with --distributed yet; leave out one of them")
    train_data = None if stream else device_data(dataset.x_train, dataset.y_train)
    test_data = device_data(dataset.x_test, dataset.y_test)
    train_step = train_lib.make_train_step(task.loss_fn, optimizer, task.update_fn)
    # Devices and seed layout: vae_jax.parallel compiles the epoch and evaluation for them.
    plan = parallel.make_plan(len(seeds), config.batch_size, config.devices, config.seed_layout)
    state, keys = plan.place_replicated(state), plan.place_replicated(keys)
    train_data, test_data = plan.place_shared(train_data), plan.place_shared(test_data)
    epoch_fn = parallel.make_epoch_program(train_step, config.batch_size, plan)
    if stream:
        host_arrays = {"x": dataset.x_train, **({} if dataset.y_train is None else {"y": dataset.y_train})}
        epoch_fn = streaming.make_stream_epoch(train_step, config.batch_size, plan, host_arrays)
    eval_fn = parallel.make_eval_program(task.eval_fn, config.eval_batch_size, plan)
    steps_per_epoch = dataset.x_train.shape[0] // config.batch_size

    board = tensorboard.EpochWriter(workdir) if config.tensorboard and jax.process_index() == 0 else None
    test_metrics = None
    train_seconds = 0.0
    bar = tqdm(
        total=config.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
        disable=not config.progress or not distributed.is_main_process(), unit="step", dynamic_ncols=True,
    )
    last_saved = start_epoch
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        state, train_metrics = epoch_fn(state, train_data, keys.data, keys.sample, jnp.int32(epoch))
        train_metrics = distributed.to_host(train_metrics)  # waits for the epoch
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        train_loss = np.asarray(train_metrics["loss"])
        if not np.all(np.isfinite(train_loss)):
            bad = [s for s, v in zip(seeds, train_loss) if not np.isfinite(v)]
            bar.close()
            raise TrainingDiverged(
                f"non-finite training loss in epoch {epoch + 1} (seed {bad[0]}); the last good checkpoint "
                f"(epoch {last_saved}) is kept in {workdir}; lower --learning-rate and resume"
            )
        test_metrics = distributed.to_host(eval_fn(state.params, test_data, evaluate.eval_key()))
        line = {"epoch": epoch + 1, "seconds": seconds}
        for name, values in train_metrics.items():
            line[f"train_{name}"] = float(np.mean(values))
        for name, values in test_metrics.items():
            line[f"test_{name}"] = float(np.mean(values))
        if len(seeds) > 1:
            line["per_seed"] = {
                **{f"train_{k}": np.asarray(v).tolist() for k, v in train_metrics.items()},
                **{f"test_{k}": np.mean(v, axis=-1).tolist() for k, v in test_metrics.items()},
            }
        history.append(line)
        if distributed.is_main_process():
            with open(metrics_path, "a") as f:
                f.write(json.dumps(line) + "\n")
        if board is not None:
            board.log_epoch(line, seeds)
        if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
            checkpoint.save(manager, epoch + 1, state)
            last_saved = epoch + 1
        bar.update(steps_per_epoch)
        bar.set_postfix(loss=f"{line['train_loss']:.2f}", **{task.headline: f"{line[f'test_{task.headline}']:.2f}"})
    bar.close()

    if test_metrics is None:  # nothing left to train: evaluate the restored state
        test_metrics = distributed.to_host(eval_fn(state.params, test_data, evaluate.eval_key()))
    epochs_run = config.epochs - start_epoch
    summary = {
        "seeds": seeds,
        "epochs": config.epochs,
        "resumed_from_epoch": start_epoch,
        "dataset": dataset.summary(),
        "test": {name: mean_std(np.mean(values, axis=-1)) for name, values in test_metrics.items()},
        "wall_seconds": time.time() - start_time,
        "train_seconds": train_seconds,
        "steps_per_second": (epochs_run * steps_per_epoch / train_seconds) if train_seconds else None,
        "device": str(jax.devices()[0]),
        **plan.summary(),
        "tensorboard": board is not None,
        "streamed": stream,
    }
    if len(seeds) > 1 and history and distributed.is_main_process():
        test_keys = sorted((k for k in history[-1]["per_seed"] if k.startswith("test_")),
                           key=lambda k: k != f"test_{task.headline}")  # the headline first
        curves = plots.save_seed_curves(history, seeds, test_keys, os.path.join(workdir, "seed_curves.png"),
                                        f"Test metrics of {len(seeds)} seeds, per epoch")
        summary["figures"] = [os.path.basename(curves)]
    if board is not None:
        board.close()
    _write_json(os.path.join(workdir, "summary.json"), summary)
    if jax.process_count() > 1:  # host copies: the figures read replicas that live on other processes
        state = distributed.to_host(state)
    return TrainResult(state, seeds, dataset, history, test_metrics, summary)


def write_summary(workdir: str, summary: dict, figures: list[str] | None = None) -> None:
    """Writes ``summary.json``; ``figures`` (paths) are listed in it by file name."""
    if figures is not None:
        names = [os.path.basename(p) for p in figures]
        summary["figures"] = names + [n for n in summary.get("figures", []) if n not in names]
        if summary.get("tensorboard") and distributed.is_main_process():
            board = tensorboard.EpochWriter(workdir)
            board.log_figures([os.path.join(workdir, n) for n in summary["figures"]], summary["epochs"])
            board.close()
    _write_json(os.path.join(workdir, "summary.json"), summary)
