"""A training run's workdir: the checks that keep its run safe, and the records it holds.

The records (``config.json``, ``data.json``, ``metrics.jsonl``, ``summary.json``) are written by process 0
alone (:func:`write_json`); an experiment's reports beside them are reused on a rerun for the same checkpoint,
data and settings (:func:`reuse_or_compute`). :func:`check_workdir` (run before any data loads) refuses
``--no-resume``, other settings or a shorter ``--epochs`` on a workdir that holds a run unless ``--overwrite``
is given, which moves the old run into ``WORKDIR/replaced-YYYYmmdd-HHMMSS/``: nothing is deleted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

from vae_jax import data as data_lib
from vae_jax import distributed, phases, tensorboard
from vae_jax.data import caches
from vae_jax.errors import ConfigError, flag, require_writable_dir
from vae_jax.protocol import TrainConfig

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
    | {"devices", "epoch_loop", "compile_cache", "tensorboard", "distributed", "stream"}
)
# Settings older runs wrote to config.json that no longer exist and changed nothing a run computes
# (``seed_layout``: several seeds are always vmapped now); reading a config.json drops them.
RETIRED_FIELDS = frozenset({"seed_layout"})


# ``--overwrite`` moves the old run into WORKDIR/REPLACED_PREFIX + UTC time.
REPLACED_PREFIX = "replaced-"


@dataclasses.dataclass(frozen=True)
class WorkdirPlan:
    """What :func:`vae_jax.runner.train` will do with a workdir (:func:`check_workdir`'s answer): the epoch of its
    newest checkpoint (or None), whether the old run is moved aside first (``--overwrite``), and whether the
    checkpoint already holds ``--epochs`` epochs (nothing to train; the records are left as they are)."""

    workdir: str
    checkpoint_epoch: int | None
    move_aside: bool
    nothing_to_train: bool


def checkpoint_epochs(workdir: str) -> list[int]:
    """Epochs of the finished checkpoints in ``WORKDIR/checkpoints`` (read from disk; creates nothing)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(
        int(name) for name in os.listdir(directory) if name.isdigit() and os.path.isdir(os.path.join(directory, name))
    )


def read_json(path: str, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the {what} ({type(err).__name__}); use another --workdir") from None


def _setting(value) -> str:
    """A config value as a user would type it; an empty one (``--seeds`` not given) as ``(not given)``."""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    if value == "":
        return "(not given)"
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def check_location(workdir: str) -> None:
    """A one-line :class:`ConfigError` naming ``--workdir`` unless the workdir lies inside no other run and its
    nearest existing directory can be written (nothing is written)."""
    run = enclosing_run(workdir)
    if run is not None:
        raise ConfigError(
            f"--workdir {workdir} is inside the run in {run} (it holds that run's config.json); use a directory "
            "outside it"
        )
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"--workdir {workdir}: not a writable directory (the file {existing} is in the way)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir}: not a writable directory ({existing} cannot be written)")


def check_workdir(config: TrainConfig) -> WorkdirPlan:
    """Checks, without changing anything, that ``config`` may use its workdir; returns the plan.

    A workdir with a checkpoint or a ``summary.json`` holds a run, continued only with its settings (but
    :data:`RESUMABLE_FIELDS`) and an ``--epochs`` no smaller than its checkpoint's, unless ``--overwrite``;
    else a ConfigError with a one-line message naming the flag.
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
    saved = read_json(config_path, "run's settings") if os.path.isfile(config_path) else None
    if saved is None:
        raise ConfigError(f"--workdir {workdir} holds {held} but no config.json; use another --workdir, or {aside}")
    saved, saved_kind = _saved_settings(saved, config.kind)
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


def enclosing_run(workdir: str) -> str | None:
    """The nearest directory above ``workdir`` that holds a run's ``config.json`` (a JSON object with a
    ``workdir`` setting), or None."""
    here = os.path.abspath(workdir)
    while os.path.dirname(here) != here:
        here = os.path.dirname(here)
        saved = _read_or_none(os.path.join(here, "config.json"))
        if isinstance(saved, dict) and "workdir" in saved:
            return here
    return None


DATA_RECORD = "data.json"  # in the workdir, beside config.json: the data the run trained on (Dataset.record)


def check_run_data(config: TrainConfig, record: dict) -> None:
    """Refuses to continue the run in ``config.workdir`` on data other than its ``data.json`` records.

    ``record`` is the :meth:`vae_jax.data.Dataset.record` of the data loaded now: the same ``--dataset`` can
    name other data on another machine or day. A run without ``data.json`` is not checked. Raises ConfigError.
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


def data_mismatch(workdir: str, record: dict, trained: dict | None = None) -> str | None:
    """``"--workdir W was trained on A, but this data is B"`` when ``record`` is not the data of
    ``WORKDIR/data.json`` (or of ``trained``, an exported file's record); None when it is, or when none is kept."""
    trained = _data_record(workdir) if trained is None else trained
    if trained is None:
        return None
    keys = ("source", "n_train", "n_test", "image_shape", "fingerprint")
    if all(_jsonable(trained.get(k)) == _jsonable(record.get(k)) for k in keys):
        return None
    return (
        f"--workdir {workdir} was trained on {data_lib.describe_record(trained)}, but this data is "
        f"{data_lib.describe_record(record)}"
    )


def _trained_on_spec(workdir: str) -> str | None:
    """The resolved ``--dataset`` the run in ``workdir`` trained on (``data.json``; e.g. ``mnist:embedded`` for
    ``--dataset mnist`` offline), or None when not recorded."""
    record = _data_record(workdir)
    return None if record is None else record.get("source")


def _data_record(workdir: str) -> dict | None:
    """``WORKDIR/data.json`` as read (a ConfigError if it cannot be), or None when there is none."""
    path = os.path.join(workdir, DATA_RECORD)
    return read_json(path, "record of the run's data") if os.path.isfile(path) else None


def _trained_at_size(workdir: str, saved_size: int, image_size: int) -> bool:
    """Whether a run trained with ``--image-size 0`` trained on ``image_size`` squares anyway (so asking for
    ``image_size`` now changes nothing), as ``data.json`` or ``summary.json`` says; False when neither says."""
    if saved_size != 0 or not image_size:
        return False
    for name in (DATA_RECORD, "summary.json"):
        path = os.path.join(workdir, name)
        if os.path.isfile(path):
            record = read_json(path, "run's records")
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


def retire_eval_record(workdir: str, checkpoint_epoch: int) -> None:
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
    distributed.log(
        f"eval.json described the epoch-{epoch} checkpoint; kept as {kept} (run experiments.evaluate again "
        "after training)"
    )


def data_record_of(workdir: str) -> dict | None:
    """The ``data.json`` of the run in ``workdir``, or of its first sub-run (a sweep's runs share their data);
    None when there is none."""
    candidates = [workdir] + [
        os.path.join(workdir, name)
        for name in sorted(os.listdir(workdir))
        if os.path.isdir(os.path.join(workdir, name))
    ]
    for directory in candidates:
        record = _data_record(directory)
        if record is not None:
            return record
    return None


def config_record(config: TrainConfig) -> dict:
    """What ``config.json`` holds: the family's ``kind`` and every field of the config."""
    return {"kind": config.kind, **dataclasses.asdict(config)}


def _jsonable(value):
    return json.loads(json.dumps(value))


probe_workdir = require_writable_dir  # creates the workdir if needed and checks that a file can be written in it


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
    """``sha256:...`` of trained ``params`` (any pytree of arrays) and JSON-able ``settings``: stored beside a
    report so that a rerun on the same checkpoints, data and settings reuses it (:func:`reusable_report`)."""
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


def reuse_or_compute(path: str, fingerprint: str, compute: Callable[[], tuple[dict, list[str] | None]]) -> dict:
    """The report at ``path`` when it was written for ``fingerprint`` (:func:`reusable_report`; logged), else
    computed and written.

    ``compute()`` returns ``(report, figures)``: a dict and the paths of the figures it drew (None when the
    report lists them under ``figures`` already). The report gets ``report_fingerprint`` and is written by
    :func:`write_summary` when ``path`` is a ``summary.json``, else by :func:`write_json`.
    """
    report = reusable_report(path, fingerprint)
    if report is not None:
        distributed.log(f"reusing {path} and its figures: written for these checkpoints, data and settings")
        return report
    report, figures = compute()
    if figures is not None and os.path.basename(path) != "summary.json":
        report["figures"] = [os.path.basename(p) for p in figures]
    report["report_fingerprint"] = fingerprint
    if os.path.basename(path) == "summary.json":
        write_summary(os.path.dirname(path), report, figures)
    else:
        write_json(path, report)
    return report


def complete_report(path: str) -> dict | None:
    """The JSON report at ``path`` if it can be read and every figure it lists exists beside it; else None."""
    report = _read_or_none(path)
    if not isinstance(report, dict) or not isinstance(report.get("figures", []), list):
        return None
    folder = os.path.dirname(path)
    return report if all(os.path.isfile(os.path.join(folder, str(n))) for n in report.get("figures", [])) else None


def read_history(path: str, upto_epoch: int) -> list[dict]:
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


def _read_or_none(path: str):
    """The JSON file at ``path``, or None when it cannot be read or parsed."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_run_config(workdir: str, config_cls):
    """The config a run in ``workdir`` was trained with (from its ``config.json``)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"--workdir {workdir}: no config.json here; is it the workdir of a training run?")
    with open(path) as f:
        return config_from_record(json.load(f), config_cls, workdir)


def config_from_record(saved: dict, config_cls, where: str):
    """``config_cls`` from what :func:`config_record` wrote (read from ``where``, named in the one-line errors)."""
    saved, saved_kind = _saved_settings(saved, config_cls.kind)
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


def _saved_settings(saved: dict, kind: str) -> tuple[dict, str]:
    """A read ``config.json`` without its ``kind`` (default ``kind``) and the :data:`RETIRED_FIELDS`, and that kind."""
    saved = {k: v for k, v in saved.items() if k not in RETIRED_FIELDS}
    return saved, saved.pop("kind", kind)


def write_summary(workdir: str, summary: dict, figures: list[str] | None = None) -> None:
    """Writes ``summary.json`` with this process's ``phases``; ``figures`` (paths) are listed in it by file name.
    One that an earlier process wrote with exactly this summary (a rerun that changed nothing) is left as it is."""
    if figures is not None:
        names = [os.path.basename(p) for p in figures]
        summary["figures"] = names + [n for n in summary.get("figures", []) if n not in names]
        if summary.get("tensorboard") and distributed.is_main_process():
            board = tensorboard.EpochWriter(workdir)
            board.log_figures([os.path.join(workdir, n) for n in summary["figures"]], summary["epochs"])
            board.close()
    path = os.path.abspath(os.path.join(workdir, "summary.json"))
    stored = _json_or_none(open(path).read()) if os.path.isfile(path) else None
    if path not in _SUMMARIES_WRITTEN and isinstance(stored, dict) and "phases" in stored:
        rest = {k: v for k, v in summary.items() if k != "phases"}
        if _jsonable(rest) == {k: v for k, v in stored.items() if k != "phases"}:  # a rerun that changed nothing
            summary["phases"] = stored["phases"]
            return
    summary["phases"] = {name: round(value, 2) for name, value in phases.seconds().items()}
    write_json(path, summary)
    _SUMMARIES_WRITTEN.add(path)


_SUMMARIES_WRITTEN: set[str] = set()  # the summary.json files this process wrote (their phases are its own)
