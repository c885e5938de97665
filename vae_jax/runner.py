"""The shared training driver behind every experiment.

:func:`train` takes a config (a :class:`TrainConfig` subclass) and a :class:`Task` and, the same way for
every experiment, loads the data onto the devices, trains R replicas (seeds) as one vmapped, jitted program,
evaluates the test split every epoch, writes the run's records (:mod:`vae_jax.workdir`), saves Orbax
checkpoints and resumes from the newest one. Logs and progress go to stderr; stdout holds only results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from vae_jax import arrays, compiling, distributed, errors, evaluate, faults, parallel, phases, streaming, tensorboard
from vae_jax import data as data_lib
from vae_jax import train as train_lib
from vae_jax import workdir as workdir_lib
from vae_jax.distributed import log
from vae_jax.protocol import Task, TrainConfig


def loss_has_convolution(loss_fn, state, pixels: np.ndarray, labels: np.ndarray | None, batch_size: int) -> bool:
    """Whether one replica's loss on a batch of ``pixels`` (and ``labels``) holds a convolution (``state``:
    replicated). The loss is traced, not run: its gradient has a convolution exactly when it does, and tracing
    the loss alone takes a third of the time."""
    params = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state.params)
    canonical = jax.dtypes.canonicalize_dtype
    batch = {"x": jax.ShapeDtypeStruct((batch_size, *pixels.shape[1:]), canonical(pixels.dtype))}
    if labels is not None:
        batch["y"] = jax.ShapeDtypeStruct((batch_size,), canonical(labels.dtype))
    step = jax.ShapeDtypeStruct((), jnp.int32)
    return parallel.has_convolution(
        lambda p, b, k, s: loss_fn(p, arrays.batch_to_float(b), k, s), params, batch, jax.random.key(0), step
    )


@dataclasses.dataclass
class TrainResult:
    state: train_lib.TrainState  # replicated: every leaf has a leading [R] axis
    seeds: list[int]
    dataset: data_lib.Dataset
    history: list[dict]
    test_metrics: dict[str, np.ndarray] | None  # per-example test metrics, [R, N] each; None if nothing trained
    summary: dict[str, Any]
    # True when nothing was trained and the finished run's summary.json was read back instead of evaluating
    reused_summary: bool = False

    def params(self, replica: int = 0):
        """The params of one replica, sliced on the host (indexing device arrays would compile per leaf shape)."""
        return jax.device_put(jax.tree_util.tree_map(lambda a: np.asarray(a)[replica], self.state.params))


def task_optimizer(config: TrainConfig, task: Task, total_steps: int | None = None) -> optax.GradientTransformation:
    """The task's own optimizer (``task.optimizer``) if it has one, else the config's, which leaves the params
    that ``task.not_trained`` marks alone."""
    if task.optimizer is not None:
        return task.optimizer
    optimizer = train_lib.make_optimizer(config, total_steps)
    if task.not_trained is None:
        return optimizer

    def labels(params):
        return jax.tree_util.tree_map(lambda frozen: "not_trained" if frozen else "trained", task.not_trained(params))

    return optax.multi_transform({"trained": optimizer, "not_trained": optax.set_to_zero()}, labels)


def load_data(config: TrainConfig) -> data_lib.Dataset:
    """The config's dataset; with ``--stream`` or ``--distributed`` an ``npz:`` archive is memory-mapped, and any
    other source in a run of several processes is decoded once, by process 0 (:func:`decode_once`)."""
    phases.enter("data")
    if config.distributed:  # before anything touches a device (a no-op once cli.parse_config has started it)
        distributed.initialize()
    try:
        if config.distributed and jax.process_count() > 1 and not config.dataset.startswith("npz:"):
            return decode_once(config)
        return data_lib.load_dataset(
            config.dataset,
            data_dir=config.data_dir or None,
            binarize=config.binarize,
            batch_size=config.batch_size,
            image_size=config.image_size,
            memory_map=config.stream or config.distributed,
            skip_unreadable=config.skip_unreadable,
        )
    except BaseException as err:  # with --distributed, the other processes stop at their next barrier
        distributed.report_stop(err)
        raise


DECODE_WAIT_S = 4 * 3600  # how long the other processes wait for process 0 to decode the dataset


def decode_once(config: TrainConfig) -> data_lib.Dataset:
    """:func:`vae_jax.data.decode_once` for this process: process 0 decodes the config's dataset into the
    workdir, and every process maps it once all have reached the ``data_decoded`` barrier."""
    return data_lib.decode_once(
        config,
        process_index=jax.process_index(),
        wait_for_all=lambda: distributed.wait_for_all("data_decoded", timeout_s=DECODE_WAIT_S),
    )


def host_split(pixels: np.ndarray, labels: np.ndarray | None) -> dict:
    """One split as the programs read it, ``{"x": pixels}`` and ``"y"`` when it has labels (host arrays, in their
    stored dtype: the programs convert each batch with :func:`vae_jax.data.pixels_to_float`)."""
    return {"x": pixels} if labels is None else {"x": pixels, "y": labels}


def make_epoch(
    task: Task,
    optimizer: optax.GradientTransformation,
    config: TrainConfig,
    layout: parallel.Plan,
    epoch_loop: str | None,
    num_examples: int,
    host_arrays: dict | None = None,
) -> Callable:
    """The epoch function :func:`train` calls: ``(state[R], data, data_keys[R], sample_keys[R], epoch)
    -> (state[R], metrics[R])``, streamed from ``host_arrays`` when given (:mod:`vae_jax.streaming`), else
    the device-resident program of :func:`vae_jax.parallel.make_epoch_program` over ``num_examples`` rows."""
    step = train_lib.make_train_step(task.loss_fn, optimizer, task.update_fn, config.max_consecutive_skips)
    if host_arrays is not None:
        return streaming.make_stream_epoch(step, config.batch_size, layout, host_arrays)
    return parallel.make_epoch_program(step, config.batch_size, layout, epoch_loop, num_examples)


def check_setup(config: TrainConfig) -> None:
    """Checks the flags that need no data, writing nothing (``cli.parse_config`` runs it before any data loads):
    the workdir's place (:func:`vae_jax.workdir.check_location`); ``--devices``, ``--seeds`` and ``--batch-size``
    fit the devices. Raises ConfigError with a one-line message naming the flag."""
    workdir_lib.check_location(config.workdir)
    parallel.make_plan(len(config.seed_list()), config.batch_size, config.devices)


def train_and_report(config: TrainConfig, make_task: Callable, report: Callable, **train_kwargs):
    """One model's run: workdir checked, data loaded, ``make_task(config, image_shape) -> (model, task)``
    trained, and ``report(config, model, result)``'s value (:func:`report_on_main`)."""
    workdir_lib.check_workdir(config)
    dataset = load_data(config)
    log(f"data: {dataset.describe()}")
    model, task = make_task(config, dataset.image_shape)
    result = train(config, task, dataset, **train_kwargs)
    return report_on_main(config.workdir, lambda: report(config, model, result))


def report_on_main(workdir: str, report: Callable[[], Any]):
    """``report()`` (figures, records, result lines) in process 0 alone, then a stdout line naming the data the
    run trained on; returns ``report()``'s value. Every other process prints where the results are written and
    returns None."""
    if distributed.is_main_process():
        phases.enter("analyses")
        out = report()
        trained_on = workdir_lib.data_record_of(workdir)
        if trained_on is not None:  # on stdout beside the result line: the same flags can name other data
            print(f"data: {data_lib.describe_record(trained_on)}", flush=True)
        phases.report()
        return out
    print(f"process {jax.process_index()}: the results are written by process 0 in {workdir}", flush=True)
    return None


def reuse_or_compute_summary(config: TrainConfig, result: TrainResult, compute: Callable[[], tuple]) -> dict:
    """The run's ``summary.json`` when it was written for these checkpoints, flags and data, else ``compute()
    -> (summary, figure paths)`` written there (:func:`vae_jax.workdir.reuse_or_compute`)."""
    fingerprint = workdir_lib.report_fingerprint(
        jax.device_get(result.state.params),
        {"config": workdir_lib.result_settings(config), "dataset": result.dataset.summary()},
    )
    return workdir_lib.reuse_or_compute(os.path.join(config.workdir, "summary.json"), fingerprint, compute)


def mean_std(values) -> dict:
    """Mean, std (ddof 0) and the 95% Student-t interval of the mean over seeds (None for one seed).

    The interval is ``mean ± t_{0.975, R-1} s / sqrt(R)`` with ``s`` the sample std (ddof 1).
    """
    values = np.asarray(values, np.float64)
    ci95 = None
    if values.size > 1:
        from scipy.special import stdtrit  # the t quantile; scipy.stats's import is slow (docs/benchmarks.md)

        half = stdtrit(values.size - 1, 0.975) * values.std(ddof=1) / np.sqrt(values.size)
        ci95 = [float(values.mean() - half), float(values.mean() + half)]
    return {"mean": float(values.mean()), "std": float(values.std()), "ci95": ci95, "per_seed": values.tolist()}


def state_template(config: TrainConfig, task: Task) -> train_lib.TrainState:
    """The shapes and dtypes of the train state (all replicas) of the run ``config`` describes, traced but not
    compiled (:func:`vae_jax.train.abstract_replicated_state`): a template to restore its checkpoints into."""
    keys = train_lib.replica_keys(config.seed_list())
    return train_lib.abstract_replicated_state(
        task.init_params, task_optimizer(config, task), keys.init, task.init_model_state
    )


def restore_state(config: TrainConfig, task: Task) -> tuple[int, train_lib.TrainState]:
    """The newest checkpointed train state (all replicas) of the run ``config`` describes."""
    from vae_jax import checkpoint  # Orbax: imported when a checkpoint is read or written, not with the runner

    manager = checkpoint.make_manager(config.workdir)
    try:
        if manager.latest_step() is None:
            raise errors.CheckpointError(f"--workdir {config.workdir}: no checkpoint to restore")
        return checkpoint.restore_latest(manager, state_template(config, task))
    finally:
        checkpoint.close(manager)


def train(
    config: TrainConfig, task: Task, dataset: data_lib.Dataset | None = None, train_eval_examples: int = 0
) -> TrainResult:
    """Trains ``task`` as configured, resuming from the workdir's newest checkpoint: set up, train the epochs
    left (none when the checkpoint holds ``config.epochs``: the records are left as they are), finish.

    Process 0 locks the workdir (:class:`vae_jax.faults.WorkdirLock`); a first SIGINT/SIGTERM (to any process)
    stops the run after the current epoch with a checkpoint and raises :class:`vae_jax.errors.Interrupted`.

    With ``train_eval_examples = n > 0`` each epoch also evaluates ``task.eval_fn`` on the first n training
    examples and logs the means as ``train_eval_*`` beside ``test_*`` (the generalisation gap per epoch).
    """
    if config.distributed:  # before anything touches a device, and before the lock: only process 0 takes it
        distributed.initialize()
    try:
        lock = faults.WorkdirLock(config.workdir) if distributed.is_main_process() else contextlib.nullcontext()
        with lock, faults.StopSignals() as stop, contextlib.ExitStack() as closing:
            start_time = time.time()
            run = _set_up(config, task, dataset, closing, train_eval_examples)
            test_metrics = _train_epochs(run, stop) if not run.nothing_to_train else None
            return _finish(run, test_metrics, start_time)
    except BaseException as err:  # with --distributed, the other processes stop at their next barrier
        distributed.report_stop(err)
        if config.distributed and jax.process_count() > 1 and isinstance(err, jax.errors.JaxRuntimeError):
            raise errors.PeerLost(
                f"--distributed: process {jax.process_index()} stops: {distributed.first_line(err)}; "
                f"{_checkpoint_on_disk(config.workdir)}; if another process died, start every process again to "
                "resume"
            ) from None
        raise


@dataclasses.dataclass
class _Run:
    """What :func:`_set_up` prepared for the epochs of one run; :func:`_place` fills in the devices' part."""

    config: TrainConfig
    task: Task
    dataset: data_lib.Dataset
    seeds: list[int]
    manager: Any  # the Orbax checkpoint manager
    state: train_lib.TrainState
    keys: train_lib.RunKeys
    start_epoch: int
    history: list[dict]
    board: Any
    summary_to_reuse: dict | None = None  # a finished run's summary.json, read back instead of evaluating again
    layout: Any = None  # parallel.make_plan's
    evaluate_split: Callable | None = None  # (params, data, count) -> {name: [R, count]} on the host
    test_data: Any = None
    # Only when there are epochs to train:
    stream: bool = False
    epoch_loop: str | None = None  # None when streamed (one step at a time) or nothing is trained
    epoch_fn: Callable | None = None
    train_data: Any = None
    train_eval: tuple | None = None  # (placed data, count) of the train_eval subset
    train_seconds: float = 0.0

    @property
    def nothing_to_train(self) -> bool:
        return self.start_epoch >= self.config.epochs

    @property
    def steps_per_epoch(self) -> int:
        return self.dataset.num_train // self.config.batch_size

    def path(self, name: str) -> str:
        return os.path.join(self.config.workdir, name)


def _set_up(config, task, dataset, closing, train_eval_examples: int) -> _Run:
    """Workdir plan and records, data, initial or restored state, devices, the epoch and evaluation programs."""
    if config.compile_cache:  # before anything compiles
        compiling.enable_compilation_cache()
    plan = workdir_lib.check_workdir(config)
    dataset = load_data(config) if dataset is None else dataset
    phases.enter("training")
    _prepare_workdir(config, plan, dataset.record())
    optimizer = task_optimizer(config, task, config.epochs * (dataset.num_train // config.batch_size))
    seeds = config.seed_list()
    keys = train_lib.replica_keys(seeds)
    init = (task.init_params, optimizer, keys.init, task.init_model_state)

    from vae_jax import checkpoint  # Orbax: imported when a run trains, not with the runner

    distributed.wait_for_all("train_start")  # before the first collective (Orbax's directory sync)
    manager = checkpoint.make_manager(config.workdir, keep=config.keep_checkpoints)
    closing.callback(checkpoint.close, manager)
    start_epoch = 0
    if plan.checkpoint_epoch is not None and not plan.move_aside:  # into the state's shapes; no initial state
        template = train_lib.abstract_replicated_state(*init)
        start_epoch, state = checkpoint.restore_latest(manager, template, quarantine=True)
    if start_epoch == 0:
        state = train_lib.init_replicated_state(*init)
    history = _open_records(config, start_epoch, dataset.record())
    board = tensorboard.EpochWriter(config.workdir) if config.tensorboard and jax.process_index() == 0 else None
    if board is not None:
        closing.callback(board.close)
    run = _Run(config, task, dataset, seeds, manager, state, keys, start_epoch, history, board)
    if run.nothing_to_train:
        run.summary_to_reuse = workdir_lib.complete_report(run.path("summary.json"))
    _place(run, optimizer, train_eval_examples)
    return run


def _prepare_workdir(config: TrainConfig, plan, data_record: dict) -> None:
    """Checks the run's data, probes the workdir and, with ``--overwrite``, moves the old run aside."""
    if plan.checkpoint_epoch is not None and not plan.move_aside:
        workdir_lib.check_run_data(config, data_record)
    workdir_lib.probe_workdir(config.workdir)
    # Every process has read (check_workdir) and probed the workdir before process 0 changes anything in it.
    distributed.wait_for_all("workdir_checked")
    if plan.move_aside and distributed.is_main_process():
        log(f"--overwrite: moved the previous run in {config.workdir} to {workdir_lib.move_run_aside(config.workdir)}")


def _open_records(config: TrainConfig, start_epoch: int, data_record: dict) -> list[dict]:
    """The history up to the checkpoint; a run that trains rewrites metrics.jsonl to it and writes its records."""
    workdir = config.workdir
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    history = workdir_lib.read_history(metrics_path, start_epoch)
    if start_epoch >= config.epochs:
        return history
    if start_epoch:
        log(f"resuming {workdir} from its epoch-{start_epoch} checkpoint")
        if distributed.is_main_process():
            workdir_lib.retire_eval_record(workdir, start_epoch)
    if distributed.is_main_process():
        with open(metrics_path, "w") as f:  # drop lines of epochs that were never checkpointed
            f.writelines(json.dumps(line) + "\n" for line in history)
    workdir_lib.write_json(os.path.join(workdir, "config.json"), workdir_lib.config_record(config))
    workdir_lib.write_json(os.path.join(workdir, workdir_lib.DATA_RECORD), data_record)
    return history


def _place(run: _Run, optimizer: optax.GradientTransformation, train_eval_examples: int) -> None:
    """The devices' part of ``run``: the plan and the state, then only what the run goes on to use: nothing more
    when its summary.json is reused, the test split and its evaluation, and the training set-up when epochs are
    left."""
    config, dataset = run.config, run.dataset
    run.layout = parallel.make_plan(len(run.seeds), config.batch_size, config.devices)
    run.state = run.layout.place_replicated(run.state)
    if run.summary_to_reuse is not None:
        return
    run.evaluate_split = _make_evaluate_split(run.task, config.eval_batch_size, run.layout)
    # Placed like the training split, rows split over the data shards (results past a split's rows are padding).
    run.test_data = run.layout.place_examples(host_split(dataset.test_pixels, dataset.y_test))
    if not run.nothing_to_train:
        _prepare_training(run, optimizer, train_eval_examples)


def _make_evaluate_split(task: Task, batch_size: int, layout: parallel.Plan) -> Callable:
    """``evaluate_split(params, data, count) -> {name: [R, count]}`` on the host (a split placed by ``layout``)."""
    eval_program = parallel.make_eval_program(task.eval_fn, batch_size, layout)

    def evaluate_split(params, data, count: int) -> dict:
        with phases.phase("evaluation"):
            results = arrays.to_host(eval_program(params, data, evaluate.eval_key()))
        return {name: values[:, :count] for name, values in results.items()}

    return evaluate_split


def _prepare_training(run: _Run, optimizer: optax.GradientTransformation, train_eval_examples: int) -> None:
    """The epoch program and the training split: on the devices (rows split over the data shards) unless a
    device's part would take more than half its memory, then streamed from the host; the train_eval subset."""
    config, dataset, layout = run.config, run.dataset, run.layout
    run.keys = layout.place_replicated(run.keys)
    host_arrays = host_split(dataset.train_pixels, dataset.y_train)
    run.stream = streaming.should_stream(config.stream, dataset.train_pixels.nbytes // layout.data_shards)
    if not run.stream:
        run.epoch_loop = parallel.choose_epoch_loop(
            config.epoch_loop,
            jax.devices()[0].platform,
            lambda: loss_has_convolution(
                run.task.loss_fn, run.state, dataset.train_pixels, dataset.y_train, config.batch_size
            ),
        )
        run.train_data = layout.place_examples(host_arrays)
    run.epoch_fn = make_epoch(
        run.task, optimizer, config, layout, run.epoch_loop, dataset.num_train, host_arrays if run.stream else None
    )
    if train_eval_examples > 0:
        count = min(train_eval_examples, dataset.num_train)
        run.train_eval = (layout.place_examples({name: a[:count] for name, a in host_arrays.items()}), count)


def _train_epochs(run: _Run, stop: faults.StopSignals) -> dict:
    """Trains the epochs left, each evaluated, recorded and checkpointed as configured; the last test metrics."""
    from vae_jax import checkpoint  # imported by _set_up already

    config, steps = run.config, run.steps_per_epoch
    show_bar, log_epochs = progress_mode(config.progress)
    bar = tqdm(
        total=config.epochs * steps,
        initial=run.start_epoch * steps,
        disable=not show_bar or not distributed.is_main_process(),
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    with contextlib.closing(bar):
        for epoch in range(run.start_epoch, config.epochs):
            line, test_metrics = _train_epoch(run, epoch)
            stopping = distributed.agreed_stop(stop.requested)  # a signal to any process stops all after this epoch
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs or stopping:
                checkpoint.save(run.manager, epoch + 1, run.state)
            if stopping:
                raise errors.Interrupted(stopping, epoch + 1, config.workdir)
            headline = f"test_{run.task.headline}"
            bar.update(steps)
            bar.set_postfix(loss=f"{line['train_loss']:.2f}", **{run.task.headline: f"{line[headline]:.2f}"})
            if log_epochs:
                log(
                    f"epoch {epoch + 1}/{config.epochs}: train loss {line['train_loss']:.4g}, "
                    f"test {run.task.headline} {line[headline]:.4g} ({line['seconds']:.1f} s)"
                )
    return test_metrics


def _train_epoch(run: _Run, epoch: int) -> tuple[dict, dict]:
    """One epoch: train, stop on a diverged seed, evaluate, record; returns its metrics line and test metrics."""
    t0 = time.perf_counter()
    run.state, train_metrics = run.epoch_fn(run.state, run.train_data, run.keys.data, run.keys.sample, jnp.int32(epoch))
    train_metrics = arrays.to_host(train_metrics)  # waits for the epoch
    seconds = time.perf_counter() - t0
    run.train_seconds += seconds
    _stop_if_diverged(run, np.asarray(train_metrics["loss"]), epoch)
    test_metrics = run.evaluate_split(run.state.params, run.test_data, run.dataset.num_test)
    splits = {"train": train_metrics, "test": test_metrics}
    if run.train_eval is not None:
        splits["train_eval"] = run.evaluate_split(run.state.params, *run.train_eval)
    line = {"epoch": epoch + 1, "seconds": seconds}
    for split, metrics in splits.items():
        line.update({f"{split}_{name}": float(np.mean(values)) for name, values in metrics.items()})
    if len(run.seeds) > 1:
        line["per_seed"] = {
            **{f"train_{k}": np.asarray(v).tolist() for k, v in train_metrics.items()},
            **{f"test_{k}": np.mean(v, axis=-1).tolist() for k, v in test_metrics.items()},
        }
    run.history.append(line)
    if distributed.is_main_process():
        with open(run.path("metrics.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
    if run.board is not None:
        run.board.log_epoch(line, run.seeds)
    return line, test_metrics


def _stop_if_diverged(run: _Run, train_loss: np.ndarray, epoch: int) -> None:
    """Raises :class:`vae_jax.errors.TrainingDiverged` once a seed hit ``--max-consecutive-skips``, or, with
    skipping off (0), when an epoch's training loss is not finite."""
    config, workdir = run.config, run.config.workdir
    retry = "train again with a lower --learning-rate in another --workdir (or add --overwrite)"
    skip_stop = faults.skip_limit_message(run.state, config.max_consecutive_skips, run.seeds, epoch + 1)
    if skip_stop:
        raise errors.TrainingDiverged(f"{skip_stop}; {_checkpoint_on_disk(workdir)}; check the data, or {retry}")
    if not config.max_consecutive_skips and not np.all(np.isfinite(train_loss)):
        bad = [s for s, v in zip(run.seeds, train_loss, strict=True) if not np.isfinite(v)]
        where = _checkpoint_on_disk(workdir)
        raise errors.TrainingDiverged(
            f"non-finite training loss in epoch {epoch + 1} (seed {bad[0]}); {where}; {retry}"
        )


def _finish(run: _Run, test_metrics: dict | None, start_time: float) -> TrainResult:
    """The run's summary.json (read back when nothing was trained and it is complete) and its result."""
    if run.nothing_to_train:
        reuse = run.summary_to_reuse is not None
        log(
            f"nothing to train: {run.config.workdir} already holds {run.start_epoch} epochs (--epochs "
            f"{run.config.epochs}); "
            + ("its summary.json describes that checkpoint" if reuse else "evaluating that checkpoint")
            + ", records left as they are"
        )
        if reuse:  # a finished run's summary.json describes its checkpoint: no evaluation again
            return dataclasses.replace(_result(run, None, run.summary_to_reuse), reused_summary=True)
        test_metrics = run.evaluate_split(run.state.params, run.test_data, run.dataset.num_test)
    summary = _summary(run, test_metrics, start_time)
    workdir_lib.write_json(run.path("summary.json"), summary)
    return _result(run, test_metrics, summary)


def _summary(run: _Run, test_metrics: dict, start_time: float) -> dict:
    """summary.json of a run that trained (or was evaluated again), with its seed curves for several seeds."""
    config, epochs_run = run.config, run.config.epochs - run.start_epoch
    summary = {
        "seeds": run.seeds,
        "epochs": config.epochs,
        "resumed_from_epoch": run.start_epoch,
        "dataset": run.dataset.summary(),
        "test": {name: mean_std(np.mean(values, axis=-1)) for name, values in test_metrics.items()},
        "wall_seconds": time.time() - start_time,
        "train_seconds": run.train_seconds,
        "steps_per_second": (epochs_run * run.steps_per_epoch / run.train_seconds) if run.train_seconds else None,
        "device": str(jax.devices()[0]),
        **run.layout.summary(),
        "tensorboard": run.board is not None,
        "streamed": run.stream,
        "epoch_loop": "streamed steps" if run.stream else run.epoch_loop,
    }
    history, seeds = run.history, run.seeds
    if len(seeds) > 1 and history and "per_seed" in history[-1] and distributed.is_main_process():
        from vae_jax import plots  # matplotlib only when a figure is drawn

        headline = f"test_{run.task.headline}"
        test_keys = sorted((k for k in history[-1]["per_seed"] if k.startswith("test_")), key=lambda k: k != headline)
        curves = plots.save_seed_curves(
            history, seeds, test_keys, run.path("seed_curves.png"), f"Test metrics of {len(seeds)} seeds, per epoch"
        )
        summary["figures"] = [os.path.basename(curves)]
    return summary


def _result(run: _Run, test_metrics: dict | None, summary: dict) -> TrainResult:
    # With several processes, host copies: the figures read replicas that live on other processes.
    state = arrays.to_host(run.state) if jax.process_count() > 1 else run.state
    return TrainResult(state, run.seeds, run.dataset, run.history, test_metrics, summary)


def progress_mode(progress: bool | None) -> tuple[bool, bool]:
    """``(show a progress bar, log one line per epoch)`` for ``--progress`` (None: decide by the terminal)."""
    if progress is not None:
        return progress, False
    on_terminal = sys.stderr.isatty()
    return on_terminal, not on_terminal


def _checkpoint_on_disk(workdir: str) -> str:
    """What a failed run leaves behind, as read from disk."""
    epochs = workdir_lib.checkpoint_epochs(workdir)
    if not epochs:
        return f"no checkpoint was saved in {workdir} before that"
    return f"the checkpoint of epoch {epochs[-1]} (saved before that) is kept in {os.path.join(workdir, 'checkpoints')}"
