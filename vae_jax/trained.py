"""Trained runs as objects: load any workdir (or exported file) and sample, reconstruct, encode, decode, evaluate.

::

    import jax
    from vae_jax import load_run, export_run

    run = load_run("runs/cvae")                              # family from config.json, newest good checkpoint
    threes = run.sample(20, jax.random.key(0), labels=3)     # [20, 28, 28, 1] in [0, 1]
    recon = run.reconstruct(x, labels=y)                     # x: [N, 28, 28, 1] float in [0, 1] or uint8
    metrics = run.evaluate(x, labels=y, iwae_k=100)          # the numbers experiments.evaluate reports
    export_run("runs/cvae", "cvae.msgpack")                  # one self-contained file ...
    run = load_run("cvae.msgpack")                           # ... read back bit-exactly

Every family (``vae``, ``conv_vae``, ``cvae``, ``hvae``, ``vqvae`` with its PixelCNN prior when stage 2 ran,
``autoencoder``) answers the same verbs (:class:`TrainedModel`); a verb a family lacks raises a one-line error saying
why. The family is read from the ``kind`` in ``config.json``, the image shape from ``summary.json``; no training data
is read, and TensorFlow is never imported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable

import jax
import numpy as np

from vae_jax import distributed, errors, runner
from vae_jax import workdir as workdir_lib
from vae_jax.data.npz import atomic_file
from vae_jax.errors import ConfigError
from vae_jax.tasks import autoencoder as ae_tasks
from vae_jax.tasks import conv_vae as conv_tasks
from vae_jax.tasks import cvae as cvae_tasks
from vae_jax.tasks import hvae as hvae_tasks
from vae_jax.tasks import prior as prior_tasks
from vae_jax.tasks import vae as vae_tasks
from vae_jax.tasks import vqvae as vq_tasks
from vae_jax.trained_model import TrainedModel

EXPORT_FORMAT = "vae_jax.trained_model"
EXPORT_VERSION = 1


# --- families: kind -> config class, model + task, TrainedModel class ------------------------


@dataclasses.dataclass(frozen=True)
class Family:
    """How to rebuild one family: ``config.json``'s dataclass, ``build(config, image_shape) -> (model, Task)``
    (the model exactly as it was trained) and its :class:`~vae_jax.trained_model.TrainedModel` subclass (which
    lives with the family's task; its ``eval_parts`` is None for families without a likelihood)."""

    config_cls: type
    build: Callable
    model_cls: type


def _build_vqvae(config, image_shape):
    # --kmeans-init draws its codebook from training images; restoring needs only the shapes.
    init_images = np.zeros((1, *image_shape), np.float32) if config.kmeans_init == "on" else None
    return vq_tasks.vqvae_task(config, image_shape, init_images)


# Kinds a workdir may hold that load_run does not rebuild, and why.
NOT_LOADABLE = {
    "linear_ae": "a linear autoencoder of experiments.pca_vs_linear_ae: it reconstructs around the training "
    "set's mean image, which the workdir does not store; see its summary.json and figures",
    "vq_prior": "the PixelCNN prior of a VQ-VAE run: load the VQ-VAE's workdir (the folder above), which "
    "samples through this prior",
}


# --- workdirs ------------------------------------------------------------------------------


def _kind_in(config_path: str) -> str:
    return workdir_lib.read_json(config_path, "run's config").get("kind", "vae")  # no kind: an MLP VAE (older runs)


def sub_workdirs(directory: str) -> list[tuple[str, str]]:
    """(name, kind) of the immediate sub-directories of ``directory`` that hold a config.json."""
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    paths = [(name, os.path.join(directory, name, "config.json")) for name in names]
    return [(name, _kind_in(path)) for name, path in paths if os.path.isfile(path)]


def run_kind(workdir: str) -> str:
    """The ``kind`` in ``workdir``'s config.json; a one-line error that lists sub-workdirs when there is none."""
    path = os.path.join(workdir, "config.json")
    if os.path.isfile(path):
        return _kind_in(path)
    if runs := sub_workdirs(workdir):
        listing = ", ".join(f"{os.path.join(workdir, name)} ({kind})" for name, kind in runs)
        raise ConfigError(
            f"--workdir {workdir} holds no run itself but these runs: {listing}; pass one of them as --workdir"
        )
    if not os.path.exists(workdir):
        raise ConfigError(f"--workdir {workdir}: no such file or directory")
    raise ConfigError(f"--workdir {workdir}: no config.json here; is it the workdir of a training run?")


def trained_image_shape(workdir: str) -> tuple | None:
    """The image shape the run trained on, from its summary.json (None if it has none yet)."""
    path = os.path.join(workdir, "summary.json")
    if not os.path.isfile(path):
        return None
    return tuple(workdir_lib.read_json(path, "run's summary")["dataset"]["image_shape"])


def family_of(kind: str, where: str) -> Family:
    """The :class:`Family` of ``kind``, or a one-line error saying what ``where`` holds instead."""
    if kind in FAMILIES:
        return FAMILIES[kind]
    if kind in NOT_LOADABLE:
        raise ConfigError(f"--workdir {where} holds {NOT_LOADABLE[kind]}")
    raise ConfigError(f"--workdir {where} holds a {kind!r} run; load_run reads {', '.join(FAMILIES)} runs")


def load_config(workdir: str):
    """``(kind, config)`` of the run in ``workdir``, its config's ``workdir`` set to where it is now."""
    kind = run_kind(workdir)
    config = workdir_lib.load_run_config(workdir, family_of(kind, workdir).config_cls)
    return kind, dataclasses.replace(config, workdir=workdir)


def restore_checkpoint(config, task, epoch: int | None = None) -> tuple[int, object]:
    """``(epoch, state)``: the newest good checkpoint of ``config.workdir`` (all replicas), or that of ``epoch``."""
    from vae_jax import checkpoint  # Orbax: imported only when a checkpoint is read

    if epoch is None:
        return runner.restore_state(config, task)
    manager = checkpoint.make_manager(config.workdir)
    try:
        epochs = sorted(manager.all_steps())
        if epoch not in epochs:
            raise ConfigError(
                f"--epoch {epoch}: {config.workdir} holds checkpoints of epochs "
                f"{', '.join(map(str, epochs)) or '(none)'}"
            )
        try:
            return epoch, checkpoint.restore_epoch(manager, epoch, runner.state_template(config, task))
        except Exception as err:
            raise errors.CheckpointError(
                f"checkpoint {epoch} in {manager.directory} cannot be restored ({checkpoint.one_line(err)})"
            ) from None
    finally:
        checkpoint.close(manager)


def _replica(tree, index: int):
    return jax.device_put(jax.tree_util.tree_map(lambda a: np.asarray(a)[index], tree))


def _pick_seed(seeds: list[int], seed: int | None, where: str) -> int:
    """The replica index of ``seed`` (default: the first), logging the choice when there are several."""
    if seed is None:
        if len(seeds) > 1:
            distributed.log(
                f"load_run: {where} trained seeds {seeds}; using seed {seeds[0]} (pass seed= / --seed to pick another)"
            )
        return 0
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed not in seeds:
        raise ConfigError(f"--seed must be one of the run's seeds {seeds}, got {seed!r}")
    return seeds.index(int(seed))


def _load_prior(workdir: str, model, replica: int):
    """``(prior model, params)`` of the VQ-VAE's stage-2 PixelCNN in ``workdir/prior``, or None."""
    prior_dir = os.path.join(workdir, "prior")
    if not os.path.isfile(os.path.join(prior_dir, "config.json")):
        return None
    if replica != 0:
        distributed.log(
            "load_run: the PixelCNN prior was trained on the first seed's codes; this seed samples uniform codes"
        )
        return None
    config = dataclasses.replace(workdir_lib.load_run_config(prior_dir, prior_tasks.PriorConfig), workdir=prior_dir)
    if config.conditional:
        distributed.log("load_run: the prior is class-conditional, which load_run does not sample; using uniform codes")
        return None
    prior_model, task = prior_tasks.prior_task(config, model.grid_shape, model.num_codes)
    try:
        _, state = restore_checkpoint(config, task)
    except Exception as err:  # stage 2 stopped before its first checkpoint, or a damaged one
        distributed.log(f"load_run: the prior in {prior_dir} cannot be restored ({err}); sampling uniform codes")
        return None
    return config, prior_model, _replica(state.params, 0)


def _load_workdir(workdir: str, seed: int | None, epoch: int | None) -> TrainedModel:
    kind, config = load_config(workdir)
    family = FAMILIES[kind]
    image_shape = trained_image_shape(workdir)
    if image_shape is None:
        raise ConfigError(
            f"--workdir {workdir}: no summary.json, which records the image shape the run trained "
            "on; let the run finish (or resume it) first"
        )
    replica = _pick_seed(config.seed_list(), seed, workdir)
    model, task = family.build(config, image_shape)
    epoch, state = restore_checkpoint(config, task, epoch)
    model_state = _replica(state.model_state, replica) if state.model_state else None
    prior = _load_prior(workdir, model, replica) if kind == "vqvae" else None
    params, seed = _replica(state.params, replica), config.seed_list()[replica]
    trained_on = workdir_lib.data_record_of(workdir)
    return family.model_cls(
        kind, config, model, task, params, int(epoch), seed, image_shape, model_state, prior, workdir, trained_on
    )


def load_run(workdir_or_file: str, seed: int | None = None, epoch: int | None = None) -> TrainedModel:
    """A trained run as a :class:`TrainedModel`, from its workdir or from a file :func:`export_run` wrote.

    Args:
      workdir_or_file: a training run's workdir (``config.json`` names the family; the checkpoints hold the
        params) or an exported file.
      seed: which replica of a ``--seeds N`` run (default: the first; the choice is logged to stderr when there
        are several). An exported file holds one seed.
      epoch: the checkpoint of this epoch (default: the newest one that restores).

    Raises:
      ConfigError (a ``ValueError``): a one-line message naming the problem: no run there (a folder of runs lists
      them), a kind that cannot be loaded, a seed or epoch the run does not have, a damaged or foreign file.
      ``CheckpointError``: no checkpoint restores.
    """
    path = os.fspath(workdir_or_file)
    return _load_export(path, seed, epoch) if os.path.isfile(path) else _load_workdir(path, seed, epoch)


FAMILIES = {
    "vae": Family(vae_tasks.VAEConfig, vae_tasks.vae_task, vae_tasks.GaussianVAEModel),
    "conv_vae": Family(conv_tasks.ConvVAEConfig, conv_tasks.conv_vae_task, vae_tasks.GaussianVAEModel),
    "cvae": Family(cvae_tasks.CVAEConfig, cvae_tasks.cvae_task, cvae_tasks.CVAEModel),
    "hvae": Family(hvae_tasks.HVAEConfig, hvae_tasks.hvae_task, hvae_tasks.HVAEModel),
    "vqvae": Family(vq_tasks.VQVAEConfig, _build_vqvae, vq_tasks.VQVAEModel),
    "autoencoder": Family(ae_tasks.AEConfig, ae_tasks.ae_task, ae_tasks.AutoEncoderModel),
}
VAE_KINDS = tuple(kind for kind, family in FAMILIES.items() if family.model_cls.eval_parts is not None)


def load_images(
    run: TrainedModel, spec: str = "", split: str = "test", data_dir: str | None = None, skip_unreadable=None
):
    """``(x, y)`` of ``split`` (``test``, ``train`` or ``all``) of dataset ``spec`` (default: the run's own data)
    prepared as ``run`` trained (:func:`run_dataset`): ``x`` ``[N, H, W, C]`` (float32 or the stored uint8), ``y``
    ``[N]`` labels or None; a one-line error when the images do not fit the model."""
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    dataset = run_dataset(run.config, run.source, spec, data_dir, skip_unreadable, run.data_record, run.image_shape)
    parts = {"train": [(dataset.train_pixels, dataset.y_train)], "test": [(dataset.test_pixels, dataset.y_test)]}
    chosen = parts["train"] + parts["test"] if split == "all" else parts[split]
    x = np.concatenate([np.asarray(p) for p, _ in chosen])
    y = None if any(labels is None for _, labels in chosen) else np.concatenate([labels for _, labels in chosen])
    return x, y


def run_dataset(
    config,
    source: str,
    spec: str = "",
    data_dir: str | None = None,
    skip_unreadable=None,
    trained_on=None,
    trained_shape=None,
):
    """Dataset ``spec`` (default: the run's own ``--dataset``) prepared as the run of ``config`` trained: its
    ``--binarize``, ``--image-size`` and, unless ``skip_unreadable`` says, ``--skip-unreadable``.

    ``source`` is the run's workdir or exported file. The run's own data is the workdir's decoded copy when a
    --distributed run left one (:func:`vae_jax.runner.decode_once`). A one-line error when it names other data now
    than the run trained on (``trained_on``, default the workdir's ``data.json``), or when its images are not of
    ``trained_shape`` (None: not checked).
    """
    from vae_jax import data as data_lib

    own = not spec
    decoded = data_lib.decoded_copy(config) if own and not data_dir and os.path.isdir(source) else None
    dataset = decoded or data_lib.load_dataset(
        spec or config.dataset,
        data_dir=data_dir or config.data_dir or None,
        binarize=config.binarize,
        image_size=config.image_size,
        skip_unreadable=config.skip_unreadable if skip_unreadable is None else skip_unreadable,
    )
    mismatch = workdir_lib.data_mismatch(source, dataset.record(), trained_on) if own else None
    if mismatch:
        raise ConfigError(
            f"--dataset {config.dataset}: {mismatch}; use it where its data is, or pass --dataset to use "
            "other data on purpose"
        )
    if trained_shape is not None and tuple(dataset.image_shape) != tuple(trained_shape):
        raise ConfigError(
            f"--dataset {spec or config.dataset}: images are {'x'.join(map(str, dataset.image_shape))}, the "
            f"model was trained on {'x'.join(map(str, trained_shape))}"
        )
    return dataset


SPLITS = ("test", "train", "all")


def run_and_images(args, verb: str):
    """``(run, spec, x, y)`` of the flags of :func:`vae_jax.cli.add_run_flags` and ``add_image_flags``: the run,
    the dataset spec (default: the run's) and its images and labels (:func:`load_images`); a one-line error
    when a conditional run's images have no labels (``verb``: what the command does with them)."""
    run = load_run(args.workdir, seed=args.seed, epoch=args.epoch)
    spec = args.dataset or run.config.dataset
    x, y = load_images(run, args.dataset, args.split, args.data_dir, args.skip_unreadable)
    if run.conditional:
        check_dataset_labels(spec, y, run.model.num_classes, verb)
    return run, spec, x, y


def check_dataset_labels(spec: str, y: np.ndarray | None, num_classes: int, verb: str) -> None:
    """A one-line error naming ``--dataset`` when it has no labels ``y`` for the conditional VAE (``verb``: what
    the command does with them) or when they leave its trained classes."""
    if y is None:
        raise ConfigError(f"--dataset {spec}: the conditional VAE {verb} with the images' labels; this data has none")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(
            f"--dataset {spec}: its labels run from {int(y.min())} to {int(y.max())}; the conditional VAE was "
            f"trained on classes 0 to {num_classes - 1}"
        )


# --- one self-contained file ------------------------------------------------------------------


def export_run(workdir: str, path: str, seed: int | None = None, epoch: int | None = None) -> str:
    """Writes one seed of a trained run to one self-contained file ``path`` (returned); :func:`load_run` reads it.

    The file is flax's msgpack (:mod:`flax.serialization`, exact for every dtype): a format tag and version, the
    SHA-256 of the payload, and the payload: the config, the image shape, the epoch and seed, the params, the model
    state (the VQ-VAE's EMA codebook statistics), the data record and, for a VQ-VAE whose stage 2 ran, the prior's
    config and params. Written atomically (renamed into place).
    """
    from flax import serialization

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ConfigError(f"--out {path} is a directory; give a file path like model.msgpack")
    run = load_run(workdir, seed=seed, epoch=epoch)
    host = lambda tree: jax.tree_util.tree_map(np.asarray, jax.device_get(tree))  # noqa: E731
    payload = {
        "kind": run.family,
        "config": json.dumps(workdir_lib.config_record(run.config)),
        "image_shape": list(run.image_shape),
        "epoch": run.epoch,
        "seed": run.seed,
        "params": host(run.params),
        "model_state": host(run.model_state) if run.model_state else None,
        "prior": None,
        "data": json.dumps(run.data_record),  # what it trained on (data.json): load_images checks it
    }
    if run.prior is not None:
        prior_config, _, prior_params = run.prior
        payload["prior"] = {"config": json.dumps(workdir_lib.config_record(prior_config)), "params": host(prior_params)}
    body = serialization.msgpack_serialize(payload)
    digest = hashlib.sha256(body).hexdigest()
    blob = serialization.msgpack_serialize(
        {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "sha256": digest, "payload": body}
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_file(path) as f:
        f.write(blob)
    return path


def _read_export(path: str) -> dict:
    """The payload of an exported file; a one-line error for a damaged, truncated or foreign one."""
    from flax import serialization

    foreign = f"--workdir {path} is neither a run's workdir nor a file that vae_jax.export_run wrote"
    try:
        with open(path, "rb") as f:
            outer = serialization.msgpack_restore(f.read())
    except OSError as err:
        raise ConfigError(f"--workdir {path}: cannot be read ({err.strerror})") from None
    except Exception:
        raise ConfigError(f"{foreign} (not msgpack: damaged, truncated or another kind of file)") from None
    if not isinstance(outer, dict) or outer.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"{foreign} (no {EXPORT_FORMAT!r} format tag)")
    if outer.get("version") != EXPORT_VERSION:
        raise ConfigError(
            f"--workdir {path}: an exported model of format version {outer.get('version')!r}; this "
            f"vae_jax reads version {EXPORT_VERSION}"
        )
    body = outer.get("payload")
    if not isinstance(body, bytes) or hashlib.sha256(body).hexdigest() != outer.get("sha256"):
        raise ConfigError(f"--workdir {path}: the exported model is damaged (its checksum does not match)")
    return serialization.msgpack_restore(body)


def _params_like(tree, init_params: Callable, what: str, path: str):
    """``tree`` as device arrays after checking it has the structure and leaf shapes ``init_params`` gives."""
    layout = lambda t: (jax.tree.structure(t), [np.shape(a) for a in jax.tree.leaves(t)])  # noqa: E731
    if layout(tree) != layout(jax.eval_shape(init_params, jax.random.key(0))):
        raise ConfigError(f"--workdir {path}: the exported {what} do not fit the model its config describes")
    return jax.device_put(tree)


def _load_export(path: str, seed: int | None, epoch: int | None) -> TrainedModel:
    record = _read_export(path)
    asked = {name: value for name, value in (("seed", seed), ("epoch", epoch)) if value is not None}
    if any(value != record[name] for name, value in asked.items()):
        raise ConfigError(
            f"--workdir {path} is an exported model of seed {record['seed']}, epoch {record['epoch']}; got "
            + ", ".join(f"--{name} {value}" for name, value in asked.items())
        )
    saved = json.loads(record["config"])
    kind = saved.get("kind")
    family = family_of(kind, path)
    config = workdir_lib.config_from_record(saved, family.config_cls, path)
    image_shape = tuple(record["image_shape"])
    model, task = family.build(config, image_shape)
    params = _params_like(record["params"], task.init_params, "params", path)
    model_state = None if record["model_state"] is None else jax.device_put(record["model_state"])
    prior = None
    if (saved_prior := record["prior"]) is not None:
        prior_config = workdir_lib.config_from_record(json.loads(saved_prior["config"]), prior_tasks.PriorConfig, path)
        prior_model, prior_task = prior_tasks.prior_task(prior_config, model.grid_shape, model.num_codes)
        prior_params = _params_like(saved_prior["params"], prior_task.init_params, "prior params", path)
        prior = (prior_config, prior_model, prior_params)
    epoch, seed = int(record["epoch"]), int(record["seed"])
    trained_on = json.loads(record.get("data") or "null")  # files exported before it was added: None
    return family.model_cls(
        kind, config, model, task, params, epoch, seed, image_shape, model_state, prior, path, trained_on
    )
