"""The shared training driver behind every experiment.

:func:`train` takes a config (a :class:`TrainConfig` subclass) and a
:class:`Task` (how to initialise, train and evaluate one model) and does the
rest the same way for every experiment: loads the data once onto the device,
trains R independent replicas (seeds) as one vmapped, jitted, scan-fused
program, evaluates the test split every epoch, writes ``config.json``,
``metrics.jsonl`` and ``summary.json``, saves Orbax checkpoints and resumes
from the newest one.

A workdir's run is never destroyed or rewritten by accident:
:func:`check_workdir` (called by every experiment before it loads any data)
refuses ``--no-resume``, other settings or a shorter ``--epochs`` on a
workdir that holds a run, unless ``--overwrite`` is given, which moves the
whole old run (checkpoints, records, figures, ``eval.json``) into a dated
sub-folder ``WORKDIR/replaced-YYYYmmdd-HHMMSS/``; nothing is deleted.
``config.json`` and ``summary.json`` always describe the model in the
checkpoints.

Logs and progress go to stderr (a progress bar only on a terminal, unless
``--progress`` is given; a redirected log gets one line per epoch), so that
stdout holds only the results the experiments print.
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

from vae_jax import caches, distributed, evaluate, faults, parallel, phases, streaming, tensorboard
from vae_jax import data as data_lib
from vae_jax import train as train_lib
from vae_jax.errors import ConfigError, field, flag, require, require_writable_dir  # noqa: F401 (field, require: re-exported)
from vae_jax.protocol import Task, TrainConfig  # noqa: F401 (re-exported: the names experiments know)
from vae_jax.tasks import vqvae as vqvae_tasks

# Fields that may differ between a run and its resumption.
RESUMABLE_FIELDS = frozenset(
    {
        "epochs",
        "resume",
        "overwrite",
        "progress",
        "checkpoint_every",
        "keep_checkpoints",
        "workdir",
        "data_dir",
        "eval_batch_size",
        "max_consecutive_skips",
    }
    # What the data is, with or without these, is checked against WORKDIR/data.json (check_run_data).
    | {"skip_unreadable"}
    # How a run is laid out and watched does not change what it computes (up to float reduction order).
    | {"devices", "seed_layout", "epoch_loop", "compile_cache", "tensorboard", "distributed", "stream"}
)
# ``--overwrite`` moves the old run into WORKDIR/REPLACED_PREFIX + UTC time.
REPLACED_PREFIX = "replaced-"


def loss_has_convolution(loss_fn, state, pixels: np.ndarray, labels: np.ndarray | None, batch_size: int) -> bool:
    """Whether one replica's loss on a batch of ``pixels`` (and ``labels``) holds a convolution.

    ``state`` has a leading replica axis (arrays or ``jax.ShapeDtypeStruct``). The loss is traced, not run:
    its gradient (the train step) holds a convolution exactly when the loss does, and tracing the loss alone
    takes a third of the time.
    """
    params = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state.params)
    canonical = jax.dtypes.canonicalize_dtype
    batch = {"x": jax.ShapeDtypeStruct((batch_size, *pixels.shape[1:]), canonical(pixels.dtype))}
    if labels is not None:
        batch["y"] = jax.ShapeDtypeStruct((batch_size,), canonical(labels.dtype))
    step = jax.ShapeDtypeStruct((), jnp.int32)
    return parallel.has_convolution(
        lambda p, b, k, s: loss_fn(p, train_lib.batch_to_float(b), k, s), params, batch, jax.random.key(0), step
    )


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message says which checkpoint, if any, is on disk."""


@dataclasses.dataclass
class TrainResult:
    state: train_lib.TrainState  # replicated: every leaf has a leading [R] axis
    seeds: list[int]
    dataset: data_lib.Dataset
    history: list[dict]
    test_metrics: dict[str, np.ndarray] | None  # per-example test metrics, [R, N] each; None if nothing trained
    summary: dict[str, Any]

    def params(self, replica: int = 0):
        """The params of one replica (a plain pytree of device arrays).

        Sliced on the host: indexing each device array would compile a slicing program per leaf shape.
        """
        return jax.device_put(jax.tree_util.tree_map(lambda a: np.asarray(a)[replica], self.state.params))


def make_optimizer(config: TrainConfig, total_steps: int | None = None) -> optax.GradientTransformation:
    """The optimizer the config's flags describe (:func:`vae_jax.train.make_optimizer`)."""
    return train_lib.make_optimizer(config, total_steps)


def task_optimizer(config: TrainConfig, task: Task, total_steps: int | None = None) -> optax.GradientTransformation:
    """The task's own optimizer (``task.optimizer``) if it has one, else the config's, which leaves the params
    that ``task.not_trained`` marks alone."""
    if task.optimizer is not None:
        return task.optimizer
    optimizer = make_optimizer(config, total_steps)
    if task.not_trained is None:
        return optimizer

    def labels(params):
        return jax.tree_util.tree_map(lambda frozen: "not_trained" if frozen else "trained", task.not_trained(params))

    return optax.multi_transform({"trained": optimizer, "not_trained": optax.set_to_zero()}, labels)


def load_data(config: TrainConfig) -> data_lib.Dataset:
    """The config's dataset. With ``--stream`` or ``--distributed`` an uncompressed ``npz:`` archive is
    memory-mapped, so a process reads from disk only the rows it puts on its devices or streams. Any other
    source in a run of several processes is decoded once, by process 0 (:func:`decode_once`)."""
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


# The decoded copy (vae_jax.data.decoded), named here too: experiments.evaluate reads a run's data through it.
DECODED_DATA, decoded_copy, decoded_data_key = data_lib.DECODED_DATA, data_lib.decoded_copy, data_lib.decoded_data_key
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
    """One split as the programs read it, ``{"x": pixels}`` and ``"y"`` when it has labels (host arrays).

    It goes to the devices in its stored form (``uint8`` stays ``uint8``: 1 byte a pixel;
    :meth:`vae_jax.parallel.Plan.place_examples`); the train step and the evaluation convert each
    batch with :func:`vae_jax.data.pixels_to_float`.
    """
    return {"x": pixels} if labels is None else {"x": pixels, "y": labels}


@dataclasses.dataclass(frozen=True)
class WorkdirPlan:
    """What :func:`train` will do with a workdir, decided by :func:`check_workdir` before any data is loaded.

    Attributes:
      checkpoint_epoch: epoch of the newest checkpoint on disk, or None.
      move_aside: ``--overwrite`` applies: the old run goes into ``WORKDIR/replaced-*/`` first.
      nothing_to_train: the checkpoint already holds ``--epochs`` epochs; the records are left as they are.
    """

    workdir: str
    checkpoint_epoch: int | None
    move_aside: bool
    nothing_to_train: bool


def make_epoch(
    task: Task,
    optimizer: optax.GradientTransformation,
    config: TrainConfig,
    layout: parallel.Plan,
    epoch_loop: str,
    num_examples: int,
    host_arrays: dict | None = None,
) -> Callable:
    """The epoch function :func:`train` calls: ``(state[R], data, data_keys[R], sample_keys[R], epoch)
    -> (state[R], metrics[R])``, streamed from ``host_arrays`` when given (:mod:`vae_jax.streaming`), else
    the device-resident program of :func:`vae_jax.parallel.make_epoch_program` over the training split's
    ``num_examples`` rows (:meth:`vae_jax.parallel.Plan.place_examples`).

    Its train step skips and counts non-finite steps as ``--max-consecutive-skips`` says
    (:func:`vae_jax.train.make_train_step`): one compiled epoch program per configuration.
    """
    step = train_lib.make_train_step(task.loss_fn, optimizer, task.update_fn, config.max_consecutive_skips)
    if host_arrays is not None:
        return streaming.make_stream_epoch(step, config.batch_size, layout, host_arrays)
    return parallel.make_epoch_program(step, config.batch_size, layout, epoch_loop, num_examples)


def checkpoint_epochs(workdir: str) -> list[int]:
    """Epochs of the finished checkpoints in ``WORKDIR/checkpoints`` (read from disk; creates nothing)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(
        int(name) for name in os.listdir(directory) if name.isdigit() and os.path.isdir(os.path.join(directory, name))
    )


def _read_json(path: str, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the {what} ({type(err).__name__}); use another --workdir") from None


def _setting(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def check_workdir(config: TrainConfig) -> WorkdirPlan:
    """Checks, without changing anything, that ``config`` may use its workdir; returns the plan.

    A workdir holds a run when it has a checkpoint or a ``summary.json``. Such a
    workdir is continued only with the settings it was trained with (fields in
    :data:`RESUMABLE_FIELDS` may differ) and an ``--epochs`` no smaller than its
    checkpoint's. ``--no-resume``, other settings or another kind of run are
    refused unless ``--overwrite`` is given; every message names the safe path
    (another ``--workdir``) first.

    Raises:
      ConfigError: with a one-line message naming the flag.
    """
    workdir = config.workdir
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir}: not a writable directory (a file is in the way)")
    epochs = checkpoint_epochs(workdir)
    checkpoint_epoch = epochs[-1] if epochs else None
    has_summary = os.path.isfile(os.path.join(workdir, "summary.json"))
    if checkpoint_epoch is None and not has_summary:
        # Nothing trained here yet (at most the records of a start that never reached a checkpoint).
        return WorkdirPlan(
            workdir, None, move_aside=config.overwrite and _run_entries(workdir) != [], nothing_to_train=False
        )
    if config.overwrite:
        return WorkdirPlan(workdir, checkpoint_epoch, move_aside=True, nothing_to_train=False)
    aside = f"add --overwrite to move the old run into {os.path.join(workdir, REPLACED_PREFIX + 'DATE')}/"
    held = f"a run trained for {checkpoint_epoch} epochs" if checkpoint_epoch else "a run (summary.json, no checkpoint)"
    config_path = os.path.join(workdir, "config.json")
    saved = _read_json(config_path, "run's settings") if os.path.isfile(config_path) else None
    if saved is None:
        raise ConfigError(f"--workdir {workdir} holds {held} but no config.json; use another --workdir, or {aside}")
    saved_kind = saved.pop("kind", config.kind)
    if saved_kind != config.kind:
        raise ConfigError(
            f"--workdir {workdir} holds a {saved_kind} run, not a {config.kind} run; use another --workdir, or {aside}"
        )
    if not config.resume:
        raise ConfigError(
            f"--no-resume: --workdir {workdir} holds {held}; use another --workdir, or {aside} "
            "and start afresh (or drop --no-resume to continue it)"
        )
    current = dataclasses.asdict(config)
    # A setting missing from an older config.json was added later; its default is how that run behaved.
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    changed = sorted(
        k
        for k in set(saved) | set(current)
        if k not in RESUMABLE_FIELDS and _jsonable(saved.get(k, defaults.get(k))) != _jsonable(current.get(k))
    )
    if "image_size" in changed and _trained_at_size(workdir, saved.get("image_size", 0), config.image_size):
        changed.remove("image_size")
    if "dataset" in changed and _trained_on_spec(workdir) == config.dataset:  # mnist resolved to mnist:embedded
        changed.remove("dataset")
    if changed:
        differences = ", ".join(
            f"{flag(k)} {_setting(saved.get(k, defaults.get(k)))} there, {_setting(current.get(k))} here"
            for k in changed
        )
        raise ConfigError(
            f"--workdir {workdir} holds a run with other settings ({differences}); use another --workdir, or {aside}"
        )
    if checkpoint_epoch is None:
        raise ConfigError(
            f"--workdir {workdir} has a summary.json but no checkpoint to continue from; "
            f"use another --workdir, or {aside}"
        )
    if config.epochs < checkpoint_epoch:
        raise ConfigError(
            f"--epochs {config.epochs}: --workdir {workdir} holds a run trained for {checkpoint_epoch} epochs; "
            f"pass --epochs {checkpoint_epoch} to use it as it is (or more to train it further), or use another "
            f"--workdir for a shorter run"
        )
    return WorkdirPlan(workdir, checkpoint_epoch, move_aside=False, nothing_to_train=config.epochs == checkpoint_epoch)


def check_setup(config: TrainConfig) -> None:
    """Checks the flags that need no data against the file system and the devices, writing nothing.

    The workdir must not lie inside another run (:func:`enclosing_run`) and must be a directory that can be
    made and written; ``--devices``, ``--seeds``, ``--seed-layout`` and ``--batch-size`` must fit the devices
    (:func:`vae_jax.parallel.make_plan`, of every process with ``--distributed``). ``cli.parse_config`` runs
    this before an experiment loads any data; a resumed run's settings are checked by :func:`check_workdir`.

    Raises:
      ConfigError: with a one-line message naming the flag.
    """
    run = enclosing_run(config.workdir)
    if run is not None:
        raise ConfigError(
            f"--workdir {config.workdir} is inside the run in {run} (it holds that run's "
            "config.json); use a directory outside it"
        )
    existing = os.path.abspath(config.workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"--workdir {config.workdir}: not a writable directory (the file {existing} is in the way)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {config.workdir}: not a writable directory ({existing} cannot be written)")
    parallel.make_plan(len(config.seed_list()), config.batch_size, config.devices, config.seed_layout)


def enclosing_run(workdir: str) -> str | None:
    """The nearest directory above ``workdir`` that holds a run's ``config.json`` (a JSON object with a
    ``workdir`` setting, as every experiment writes), or None. A run's own sub-runs (a VQ-VAE's ``prior/``)
    are laid out by its experiment; a workdir a user names must not lie inside another run."""
    here = os.path.abspath(workdir)
    while os.path.dirname(here) != here:
        here = os.path.dirname(here)
        path = os.path.join(here, "config.json")
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict) and "workdir" in saved:
            return here
    return None


DATA_RECORD = "data.json"  # in the workdir, beside config.json: the data the run trained on (Dataset.record)


def check_run_data(config: TrainConfig, record: dict) -> None:
    """Refuses to continue the run in ``config.workdir`` on data other than its ``data.json`` records.

    ``record`` is the :meth:`vae_jax.data.Dataset.record` of the data loaded now. The same ``--dataset``
    can name other data on another machine or day: ``mnist`` is TFDS's 70,000 digits or, offline, the
    5,000 embedded ones; a file or folder can be replaced. A run without ``data.json`` (written before it
    existed) is not checked.

    Raises:
      ConfigError: one line naming ``--dataset`` and both sources.
    """
    mismatch = data_mismatch(config.workdir, record)
    if mismatch is None:
        return
    trained_spec = _trained_on_spec(config.workdir)
    same = f" (--dataset {trained_spec})" if trained_spec != record.get("source") else ""
    raise ConfigError(
        f"--dataset {config.dataset}: {mismatch}; continue it on the same data{same}, use another --workdir, or add "
        f"--overwrite to move the old run into {os.path.join(config.workdir, REPLACED_PREFIX + 'DATE')}/"
    )


def data_mismatch(workdir: str, record: dict) -> str | None:
    """``"--workdir W was trained on A, but this data is B"`` when ``record`` (a
    :meth:`vae_jax.data.Dataset.record`) is not the data of ``WORKDIR/data.json``; None when it is, or when the
    run has no ``data.json``."""
    path = os.path.join(workdir, DATA_RECORD)
    if not os.path.isfile(path):
        return None
    trained = _read_json(path, "record of the run's data")
    keys = ("source", "n_train", "n_test", "image_shape", "fingerprint")
    if all(_jsonable(trained.get(k)) == _jsonable(record.get(k)) for k in keys):
        return None
    return (
        f"--workdir {workdir} was trained on {data_lib.describe_record(trained)}, but this data is "
        f"{data_lib.describe_record(record)}"
    )


def _trained_on_spec(workdir: str) -> str | None:
    """The resolved ``--dataset`` the run in ``workdir`` trained on (``data.json``), e.g. ``mnist:embedded`` for a
    run of ``--dataset mnist`` that fell back to the embedded digits; None when not recorded. Naming it is
    no change of settings: :func:`check_run_data` checks the data itself once it is loaded."""
    path = os.path.join(workdir, DATA_RECORD)
    return _read_json(path, "record of the run's data").get("source") if os.path.isfile(path) else None


def _trained_at_size(workdir: str, saved_size: int, image_size: int) -> bool:
    """Whether a run trained with ``--image-size 0`` (the images' own size) trained on ``image_size`` squares, so
    that asking for ``image_size`` now changes nothing (a ``--preset faces128`` run from before the preset set
    ``--image-size 128``). Read from ``data.json`` or ``summary.json``; False when neither says."""
    if saved_size != 0 or not image_size:
        return False
    for name in (DATA_RECORD, "summary.json"):
        path = os.path.join(workdir, name)
        if os.path.isfile(path):
            record = _read_json(path, "run's records")
            shape = record.get("image_shape") or record.get("dataset", {}).get("image_shape")
            return bool(shape) and list(shape[:2]) == [image_size, image_size]
    return False


def _run_entries(workdir: str) -> list[str]:
    """The workdir's entries that belong to its run: all but hidden files and earlier replaced runs."""
    if not os.path.isdir(workdir):
        return []
    return sorted(
        name for name in os.listdir(workdir) if not name.startswith(".") and not name.startswith(REPLACED_PREFIX)
    )


def move_run_aside(workdir: str) -> str:
    """Moves the run in ``workdir`` into a new ``WORKDIR/replaced-YYYYmmdd-HHMMSS/``; returns that folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    destination = os.path.join(workdir, REPLACED_PREFIX + stamp)
    suffix = 1
    while os.path.exists(destination):
        suffix += 1
        destination = os.path.join(workdir, f"{REPLACED_PREFIX}{stamp}-{suffix}")
    os.makedirs(destination)
    for name in _run_entries(workdir):
        if os.path.join(workdir, name) != destination:
            os.replace(os.path.join(workdir, name), os.path.join(destination, name))
    return destination


def _retire_eval_record(workdir: str, checkpoint_epoch: int) -> None:
    """Renames an ``eval.json`` that describes a checkpoint about to be trained past, and says so."""
    path = os.path.join(workdir, "eval.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            epoch = int(json.load(f).get("checkpoint_epoch", checkpoint_epoch))
    except (OSError, ValueError, TypeError, AttributeError):
        epoch = checkpoint_epoch
    kept = os.path.join(workdir, f"eval-epoch{epoch}.json")
    os.replace(path, kept)
    log(
        f"eval.json described the epoch-{epoch} checkpoint; kept as {kept} (run experiments.evaluate again "
        "after training)"
    )


def log(message: str) -> None:
    """A log line on stderr (stdout is kept for results); only process 0 of a ``--distributed`` run logs."""
    if distributed.is_main_process():
        print(message, file=sys.stderr, flush=True)


def report_on_main(workdir: str, report: Callable[[], Any]):
    """``report()`` (figures, records, result lines) in process 0 alone, then a stdout line naming the data the
    run trained on (``data.json``); returns ``report()``'s value.

    Every other process of a ``--distributed`` run prints one line saying where process 0 writes the results
    and returns None. An experiment keeps everything after training that only process 0 does in ``report``,
    so that no later line of the other processes depends on it.
    """
    if distributed.is_main_process():
        phases.enter("analyses")
        out = report()
        trained_on = data_record_of(workdir)
        if trained_on is not None:  # on stdout beside the result line: the same flags can name other data
            print(f"data: {data_lib.describe_record(trained_on)}", flush=True)
        phases.report()
        return out
    print(f"process {jax.process_index()}: the results are written by process 0 in {workdir}", flush=True)
    return None


def data_record_of(workdir: str) -> dict | None:
    """The ``data.json`` of the run in ``workdir``, or of its first sub-run (a sweep's runs share their data);
    None when there is none."""
    candidates = [workdir] + [
        os.path.join(workdir, name)
        for name in sorted(os.listdir(workdir))
        if os.path.isdir(os.path.join(workdir, name))
    ]
    for directory in candidates:
        path = os.path.join(directory, DATA_RECORD)
        if os.path.isfile(path):
            return _read_json(path, "record of the run's data")
    return None


def config_record(config: TrainConfig) -> dict:
    """What ``config.json`` holds: the family's ``kind`` and every field of the config."""
    return {"kind": config.kind, **dataclasses.asdict(config)}


def _jsonable(value):
    return json.loads(json.dumps(value))


def probe_workdir(workdir: str) -> None:
    """Creates ``workdir`` if needed and checks that a file can be written in it (a ConfigError if not;
    :func:`vae_jax.errors.require_writable_dir`)."""
    require_writable_dir(workdir, "workdir")


def write_json(path: str, obj) -> None:
    """Writes ``obj`` as JSON to ``path`` (through a temporary file and a rename); only process 0 of a
    ``--distributed`` run writes."""
    if not distributed.is_main_process():  # one writer per run
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def report_fingerprint(params, settings) -> str:
    """``sha256:...`` of trained ``params`` (any pytree of arrays) and JSON-able ``settings``.

    An experiment stores it beside its report (``comparison.json``,
    ``summary.json``) so that a rerun on finished checkpoints can reuse the
    report (:func:`reusable_report`) instead of evaluating again; any change
    to the parameters, the data or a setting changes the fingerprint.
    """
    return "sha256:" + caches.fingerprint(params, settings)


def result_settings(config: TrainConfig) -> dict:
    """The settings of ``config`` that change what a run computes: all but :data:`RESUMABLE_FIELDS`
    (``--epochs`` included), as JSON-able values, for :func:`report_fingerprint`."""
    return {
        k: _jsonable(v) for k, v in dataclasses.asdict(config).items() if k not in RESUMABLE_FIELDS or k == "epochs"
    }


def reusable_report(path: str, fingerprint: str) -> dict | None:
    """The JSON report at ``path`` if it was written for ``fingerprint`` (its ``report_fingerprint``
    field) and every figure it lists exists beside it; else None (the report must be computed)."""
    report = complete_report(path)
    return report if report is not None and report.get("report_fingerprint") == fingerprint else None


def complete_report(path: str) -> dict | None:
    """The JSON report at ``path`` if it can be read and every figure it lists exists beside it; else None."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("figures", []), list):
        return None
    folder = os.path.dirname(path)
    return report if all(os.path.isfile(os.path.join(folder, str(n))) for n in report.get("figures", [])) else None


def _read_history(path: str, upto_epoch: int) -> list[dict]:
    """metrics.jsonl lines of epochs <= upto_epoch (later lines belong to a lost run)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [_json_or_none(line) for line in f if line.strip()]  # a kill can tear the last line
    return [line for line in lines if line is not None and line["epoch"] <= upto_epoch]


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def mean_std(values) -> dict:
    """Mean, std (ddof 0) and the 95% Student-t interval of the mean over seeds (None for one seed).

    The interval is ``mean ± t_{0.975, R-1} s / sqrt(R)`` with ``s`` the sample std (ddof 1).
    """
    values = np.asarray(values, np.float64)
    ci95 = None
    if values.size > 1:
        from scipy.special import stdtrit  # the t quantile; scipy.stats would add 2.8 s of imports to a run

        half = stdtrit(values.size - 1, 0.975) * values.std(ddof=1) / np.sqrt(values.size)
        ci95 = [float(values.mean() - half), float(values.mean() + half)]
    return {"mean": float(values.mean()), "std": float(values.std()), "ci95": ci95, "per_seed": values.tolist()}


def load_run_config(workdir: str, config_cls):
    """The config a run in ``workdir`` was trained with (from its ``config.json``)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"--workdir {workdir}: no config.json here; is it the workdir of a training run?")
    with open(path) as f:
        return config_from_record(json.load(f), config_cls, workdir)


def config_from_record(saved: dict, config_cls, where: str):
    """``config_cls`` from what :func:`config_record` wrote (read from ``where``, named in the one-line errors)."""
    saved = dict(saved)
    saved_kind = saved.pop("kind", config_cls.kind)
    if saved_kind != config_cls.kind:
        raise ConfigError(f"--workdir {where} holds a {saved_kind} run, not a {config_cls.kind} run")
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(saved) - set(known))
    if unknown:
        raise ConfigError(
            f"--workdir {where}: config.json has settings this experiment does not know ({', '.join(unknown)})"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    return config_cls(**values)


def state_template(config: TrainConfig, task: Task) -> train_lib.TrainState:
    """The shapes and dtypes of the train state (all replicas) of the run ``config`` describes, traced but not
    compiled (:func:`vae_jax.train.abstract_replicated_state`): a template to restore its checkpoints into."""
    keys = jax.vmap(train_lib.run_keys)(jnp.asarray(config.seed_list()))
    return train_lib.abstract_replicated_state(
        task.init_params, task_optimizer(config, task), keys.init, task.init_model_state
    )


def restore_state(config: TrainConfig, task: Task) -> tuple[int, train_lib.TrainState]:
    """The newest checkpointed train state (all replicas) of the run ``config`` describes."""
    from vae_jax import checkpoint  # Orbax: imported when a checkpoint is read or written, not with the runner

    manager = checkpoint.make_manager(config.workdir)
    try:
        if manager.latest_step() is None:
            raise checkpoint.CheckpointError(f"--workdir {config.workdir}: no checkpoint to restore")
        return checkpoint.restore_latest(manager, state_template(config, task))
    finally:
        checkpoint.close(manager)


def usage_by_epoch(config: TrainConfig, task: Task, model, x: np.ndarray) -> list[dict]:
    """``[{"epoch", "codes_used", "perplexity"}]`` over all of ``x`` for every checkpoint kept in the workdir.

    Reads the Orbax checkpoints (one per ``--checkpoint-every`` epochs) and
    measures each with :func:`vae_jax.tasks.vqvae.code_usage` (a VQ-VAE ``model``); with several seeds the numbers are
    averaged over the replicas (and listed per seed). Each checkpoint is
    verified as a resume verifies it (:func:`vae_jax.checkpoint.restore_epoch`:
    SHA-256 manifest, leaf shapes); one that fails is left out with a one-line warning.
    """
    from vae_jax import checkpoint  # Orbax: imported when a checkpoint is read, not with the runner

    abstract = state_template(config, task)
    manager = checkpoint.make_manager(config.workdir, keep=config.keep_checkpoints)
    out = []
    try:
        for step in sorted(manager.all_steps()):
            try:
                state = checkpoint.restore_epoch(manager, step, abstract)
            except Exception as err:
                print(
                    f"warning: checkpoint {step} in {manager.directory} cannot be restored "
                    f"({checkpoint.one_line(err)}); its codebook usage is left out",
                    file=sys.stderr,
                )
                continue
            usage = [
                vqvae_tasks.code_usage(model, jax.tree_util.tree_map(lambda a: a[r], state.params), x)
                for r in range(len(config.seed_list()))
            ]
            out.append(
                {
                    "epoch": int(step),
                    "codes_used": float(np.mean([u["codes_used"] for u in usage])),
                    "perplexity": float(np.mean([u["perplexity"] for u in usage])),
                    "per_seed_codes_used": [u["codes_used"] for u in usage],
                    "per_seed_perplexity": [u["perplexity"] for u in usage],
                }
            )
    finally:
        checkpoint.close(manager)
    return out


def train(
    config: TrainConfig, task: Task, dataset: data_lib.Dataset | None = None, train_eval_examples: int = 0
) -> TrainResult:
    """Trains ``task`` as configured, resuming from the workdir's newest checkpoint.

    The workdir is locked for the run by process 0 (:class:`vae_jax.faults.WorkdirLock`);
    a first SIGINT/SIGTERM stops the run after the current epoch with a
    checkpoint and raises :class:`vae_jax.faults.Interrupted`; with ``--distributed``
    a signal to any one process stops every process after the same epoch, with one
    checkpoint (:func:`vae_jax.distributed.agreed_stop`).

    With ``train_eval_examples = n > 0`` each epoch also evaluates ``task.eval_fn``
    on the first n training examples (a fixed subset) and logs the means as
    ``train_eval_*`` beside ``test_*``: the same metric on seen and unseen
    images, so the generalisation gap can be read per epoch.
    """
    if config.distributed:  # before anything touches a device, and before the lock: only process 0 takes it
        distributed.initialize()
    try:
        lock = faults.WorkdirLock(config.workdir) if distributed.is_main_process() else contextlib.nullcontext()
        with lock, faults.StopSignals() as stop, contextlib.ExitStack() as closing:
            return _train(config, task, dataset, stop, closing, train_eval_examples)
    except BaseException as err:  # with --distributed, the other processes stop at their next barrier
        distributed.report_stop(err)
        if config.distributed and jax.process_count() > 1 and isinstance(err, jax.errors.JaxRuntimeError):
            raise faults.PeerLost(
                f"--distributed: process {jax.process_index()} stops: {distributed.first_line(err)}; "
                f"{_checkpoint_on_disk(config.workdir)}; if another process died, start every process again to "
                "resume"
            ) from None
        raise


def _train(
    config: TrainConfig,
    task: Task,
    dataset: data_lib.Dataset | None,
    stop: faults.StopSignals,
    closing: contextlib.ExitStack,
    train_eval_examples: int = 0,
) -> TrainResult:
    """The body of :func:`train`.

    The workdir is checked first (:func:`check_workdir`); with ``--overwrite``
    an old run is moved into ``WORKDIR/replaced-*/``. When the checkpoint
    already holds ``config.epochs`` epochs nothing is trained: the restored
    state is evaluated and ``config.json``, ``metrics.jsonl`` and
    ``summary.json`` are left as they are. The checkpoint manager and the
    TensorBoard writer are closed through ``closing`` however the run ends
    (their threads joined before the workdir lock is released).
    """
    start_time = time.time()
    if config.distributed:  # before anything touches a device
        distributed.initialize()
    if config.compile_cache:  # before anything compiles
        caches.enable_compilation_cache()
    seeds = config.seed_list()
    plan = check_workdir(config)
    dataset = load_data(config) if dataset is None else dataset
    data_record = dataset.record()
    phases.enter("training")
    if plan.checkpoint_epoch is not None and not plan.move_aside:
        check_run_data(config, data_record)
    workdir = config.workdir
    probe_workdir(workdir)
    # Every process has read (check_workdir) and probed the workdir before process 0 changes anything in it.
    distributed.wait_for_all("workdir_checked")
    if plan.move_aside and distributed.is_main_process():
        log(f"--overwrite: moved the previous run in {workdir} to {move_run_aside(workdir)}")
    metrics_path = os.path.join(workdir, "metrics.jsonl")

    optimizer = task_optimizer(config, task, config.epochs * (dataset.num_train // config.batch_size))
    keys = jax.vmap(train_lib.run_keys)(jnp.asarray(seeds))
    state = train_lib.init_replicated_state(task.init_params, optimizer, keys.init, task.init_model_state)

    from vae_jax import checkpoint  # Orbax: imported when a run trains, not with the runner

    distributed.wait_for_all("train_start")  # before the first collective (Orbax's directory sync)
    manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
    closing.callback(checkpoint.close, manager)
    start_epoch = 0
    if plan.checkpoint_epoch is not None and not plan.move_aside:
        start_epoch, state = checkpoint.restore_latest(manager, state, quarantine=True)
    nothing_to_train = start_epoch >= config.epochs
    history = _read_history(metrics_path, start_epoch)
    summary_path = os.path.join(workdir, "summary.json")
    # a finished run's summary.json describes its checkpoint: a rerun reads it instead of evaluating again
    reuse_summary = nothing_to_train and complete_report(summary_path) is not None
    if nothing_to_train:
        log(
            f"nothing to train: {workdir} already holds {start_epoch} epochs (--epochs {config.epochs}); "
            + ("its summary.json describes that checkpoint" if reuse_summary else "evaluating that checkpoint")
            + ", records left as they are"
        )
    else:
        if start_epoch:
            log(f"resuming {workdir} from its epoch-{start_epoch} checkpoint")
            if distributed.is_main_process():
                _retire_eval_record(workdir, start_epoch)
        if distributed.is_main_process():
            with open(metrics_path, "w") as f:  # drop lines of epochs that were never checkpointed
                f.writelines(json.dumps(line) + "\n" for line in history)
        write_json(os.path.join(workdir, "config.json"), config_record(config))
        write_json(os.path.join(workdir, DATA_RECORD), data_record)

    # Devices and seed layout: vae_jax.parallel compiles the epoch and evaluation for them.
    layout = parallel.make_plan(len(seeds), config.batch_size, config.devices, config.seed_layout)
    state, keys = layout.place_replicated(state), layout.place_replicated(keys)
    # The training split stays on the devices, its rows split over the mesh's data shards, unless a device's
    # part would take more than half its memory: then batches stream from the host (vae_jax.streaming).
    host_arrays = host_split(dataset.train_pixels, dataset.y_train)
    stream = streaming.should_stream(config.stream, dataset.train_pixels.nbytes // layout.data_shards)
    train_data = None if stream or nothing_to_train else layout.place_examples(host_arrays)
    # The evaluation splits too: each batch is split over the data shards (results past a split's rows are padding).
    test_data = layout.place_examples(host_split(dataset.test_pixels, dataset.y_test))
    epoch_loop = parallel.choose_epoch_loop(
        config.epoch_loop,
        jax.devices()[0].platform,
        lambda: loss_has_convolution(task.loss_fn, state, dataset.train_pixels, dataset.y_train, config.batch_size),
    )
    epoch_fn = make_epoch(
        task, optimizer, config, layout, epoch_loop, dataset.num_train, host_arrays if stream else None
    )
    eval_program = parallel.make_eval_program(task.eval_fn, config.eval_batch_size, layout)

    def evaluate_split(params, data, count: int) -> dict:  # {name: [R, count]} on the host
        with phases.phase("evaluation"):
            results = distributed.to_host(eval_program(params, data, evaluate.eval_key()))
        return {name: values[:, :count] for name, values in results.items()}

    steps_per_epoch = dataset.num_train // config.batch_size

    # -- train_eval: the eval metrics on a fixed subset of training examples -------------
    train_eval_data = None
    if train_eval_examples > 0:
        train_eval_count = min(train_eval_examples, dataset.num_train)
        train_eval_data = layout.place_examples({name: a[:train_eval_count] for name, a in host_arrays.items()})
    # -------------------------------------------------------------------------------------

    board = tensorboard.EpochWriter(workdir) if config.tensorboard and jax.process_index() == 0 else None
    if board is not None:
        closing.callback(board.close)
    test_metrics = None
    train_seconds = 0.0
    show_bar, log_epochs = progress_mode(config.progress)
    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        initial=start_epoch * steps_per_epoch,
        disable=not show_bar or nothing_to_train or not distributed.is_main_process(),
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        state, train_metrics = epoch_fn(state, train_data, keys.data, keys.sample, jnp.int32(epoch))
        train_metrics = distributed.to_host(train_metrics)  # waits for the epoch
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        train_loss = np.asarray(train_metrics["loss"])
        skip_stop = faults.skip_limit_message(state, config.max_consecutive_skips, seeds, epoch + 1)
        if skip_stop:
            bar.close()
            raise TrainingDiverged(
                f"{skip_stop}; {_checkpoint_on_disk(workdir)}; check the data, or train again with "
                "a lower --learning-rate in another --workdir (or add --overwrite)"
            )
        if not config.max_consecutive_skips and not np.all(np.isfinite(train_loss)):
            bad = [s for s, v in zip(seeds, train_loss) if not np.isfinite(v)]
            bar.close()
            raise TrainingDiverged(
                f"non-finite training loss in epoch {epoch + 1} (seed {bad[0]}); {_checkpoint_on_disk(workdir)}; "
                "train again with a lower --learning-rate in another --workdir (or add --overwrite)"
            )
        test_metrics = evaluate_split(state.params, test_data, dataset.num_test)
        line = {"epoch": epoch + 1, "seconds": seconds}
        for name, values in train_metrics.items():
            line[f"train_{name}"] = float(np.mean(values))
        for name, values in test_metrics.items():
            line[f"test_{name}"] = float(np.mean(values))
        if train_eval_data is not None:  # train_eval (see the docstring)
            seen = evaluate_split(state.params, train_eval_data, train_eval_count)
            line.update({f"train_eval_{name}": float(np.mean(values)) for name, values in seen.items()})
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
        stopping = distributed.agreed_stop(stop.requested)  # a signal to any process stops all after this epoch
        if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs or stopping:
            checkpoint.save(manager, epoch + 1, state)
        if stopping:
            bar.close()
            raise faults.Interrupted(stopping, epoch + 1, workdir)
        bar.update(steps_per_epoch)
        bar.set_postfix(loss=f"{line['train_loss']:.2f}", **{task.headline: f"{line[f'test_{task.headline}']:.2f}"})
        if log_epochs:
            log(
                f"epoch {epoch + 1}/{config.epochs}: train loss {line['train_loss']:.4g}, "
                f"test {task.headline} {line[f'test_{task.headline}']:.4g} ({seconds:.1f} s)"
            )
    bar.close()

    if reuse_summary:
        return _finished_result(config, state, seeds, dataset, history, summary_path)
    if test_metrics is None:  # nothing left to train and no summary: evaluate the restored state
        test_metrics = evaluate_split(state.params, test_data, dataset.num_test)
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
        **layout.summary(),
        "tensorboard": board is not None,
        "streamed": stream,
        "epoch_loop": "streamed steps" if stream else epoch_loop,
    }
    if len(seeds) > 1 and history and "per_seed" in history[-1] and distributed.is_main_process():
        from vae_jax import plots  # matplotlib only when a figure is drawn

        test_keys = sorted(
            (k for k in history[-1]["per_seed"] if k.startswith("test_")), key=lambda k: k != f"test_{task.headline}"
        )  # the headline first
        curves = plots.save_seed_curves(
            history,
            seeds,
            test_keys,
            os.path.join(workdir, "seed_curves.png"),
            f"Test metrics of {len(seeds)} seeds, per epoch",
        )
        summary["figures"] = [os.path.basename(curves)]
    write_json(summary_path, summary)
    if jax.process_count() > 1:  # host copies: the figures read replicas that live on other processes
        state = distributed.to_host(state)
    return TrainResult(state, seeds, dataset, history, test_metrics, summary)


def _finished_result(config: TrainConfig, state, seeds, dataset, history, summary_path: str) -> TrainResult:
    """The result of a finished run that had nothing to train: its restored state and its own summary.json.

    No test evaluation (``test_metrics`` is None): the summary already holds that checkpoint's test metrics.
    """
    if jax.process_count() > 1:
        state = distributed.to_host(state)
    return TrainResult(state, seeds, dataset, history, None, _read_json(summary_path, "run's summary"))


def progress_mode(progress: bool | None) -> tuple[bool, bool]:
    """``(show a progress bar, log one line per epoch)`` for ``--progress`` (None: decide by the terminal)."""
    if progress is not None:
        return progress, False
    on_terminal = sys.stderr.isatty()
    return on_terminal, not on_terminal


def _checkpoint_on_disk(workdir: str) -> str:
    """What a failed run leaves behind, as read from disk."""
    epochs = checkpoint_epochs(workdir)
    if not epochs:
        return f"no checkpoint was saved in {workdir} before that"
    return f"the checkpoint of epoch {epochs[-1]} (saved before that) is kept in {os.path.join(workdir, 'checkpoints')}"


def write_summary(workdir: str, summary: dict, figures: list[str] | None = None) -> None:
    """Writes ``summary.json``; ``figures`` (paths) are listed in it by file name."""
    if figures is not None:
        names = [os.path.basename(p) for p in figures]
        summary["figures"] = names + [n for n in summary.get("figures", []) if n not in names]
        if summary.get("tensorboard") and distributed.is_main_process():
            board = tensorboard.EpochWriter(workdir)
            board.log_figures([os.path.join(workdir, n) for n in summary["figures"]], summary["epochs"])
            board.close()
    summary["phases"] = {name: round(value, 2) for name, value in phases.seconds().items()}
    write_json(os.path.join(workdir, "summary.json"), summary)
