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
import math
import os
import warnings
from collections.abc import Callable

import jax
import numpy as np

from vae_jax import arrays, errors, evaluate, runner
from vae_jax import workdir as workdir_lib
from vae_jax.data import pixels_to_float
from vae_jax.data.npz import atomic_file
from vae_jax.errors import ConfigError
from vae_jax.tasks import autoencoder as ae_tasks
from vae_jax.tasks import conv_vae as conv_tasks
from vae_jax.tasks import cvae as cvae_tasks
from vae_jax.tasks import hvae as hvae_tasks
from vae_jax.tasks import prior as prior_tasks
from vae_jax.tasks import vae as vae_tasks
from vae_jax.tasks import vqvae as vq_tasks

EXPORT_FORMAT = "vae_jax.trained_model"
EXPORT_VERSION = 1


# --- families: kind -> config class, model + task, TrainedModel class, evaluation parts ----------


@dataclasses.dataclass(frozen=True)
class Family:
    """How to rebuild one family: ``config.json``'s dataclass, ``build(config, image_shape) -> (model, Task)``
    (the model exactly as it was trained), its :class:`TrainedModel` subclass and, for families with a
    likelihood, ``eval_parts(model, task, config) -> VAEEvalParts``."""

    config_cls: type
    build: Callable
    model_cls: type
    eval_parts: Callable | None = None


def _gaussian_parts(model, task, config):
    resolved = config.resolved() if hasattr(config, "resolved") else config  # a conv preset fixes the likelihood
    return evaluate.gaussian_vae_parts(model, task.eval_fn, resolved.likelihood, resolved.decoder_logvar)


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
            runner.log(
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
        runner.log(
            "load_run: the PixelCNN prior was trained on the first seed's codes; this seed samples uniform codes"
        )
        return None
    config = dataclasses.replace(workdir_lib.load_run_config(prior_dir, prior_tasks.PriorConfig), workdir=prior_dir)
    if config.conditional:
        runner.log("load_run: the prior is class-conditional, which load_run does not sample; using uniform codes")
        return None
    prior_model, task = prior_tasks.prior_task(config, model.grid_shape, model.num_codes)
    try:
        _, state = restore_checkpoint(config, task)
    except Exception as err:  # stage 2 stopped before its first checkpoint, or a damaged one
        runner.log(f"load_run: the prior in {prior_dir} cannot be restored ({err}); sampling uniform codes")
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


# --- one interface for every family ----------------------------------------------------------


def _as_key(key, name: str = "key") -> jax.Array:
    """A typed PRNG key from a key or an integer seed."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
        return key
    if isinstance(key, jax.Array) and key.dtype == np.uint32 and key.shape == (2,):  # a raw jax.random.PRNGKey
        return jax.random.wrap_key_data(key)
    raise ConfigError(f"{name} must be a jax.random.key(...) or an integer seed, got {key!r}")


def _check_count(n, name: str = "n", smallest: int = 1, note: str = "a positive integer") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < smallest:
        raise ConfigError(f"{name} must be {note}, got {n!r}")
    return int(n)


def _check_temperature(temperature) -> float:
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"temperature must be a positive number (1: the prior itself), got {temperature!r}")
    return value


@dataclasses.dataclass(eq=False, repr=False)
class TrainedModel:
    """A trained model of any family, answering the same verbs; made by :func:`load_run`.

    Images are ``[N, H, W, C]`` (``image_shape``), float in [0, 1] or ``uint8`` in, float32 in the data's range
    ([0, 1] for every decoder here, unless an autoencoder was trained with ``--output linear``) out. ``labels`` are
    the conditional VAE's classes (int or ``[N]`` ints in ``[0, num_classes)``); every other family takes ``None``.

    Attributes:
      model: the flax module. params: the bare params tree of this seed.
      variables: ``{"params": params}`` for ``model.apply``. config: the run's config dataclass.
      family: the ``kind`` (``vae``, ``conv_vae``, ``cvae``, ``hvae``, ``vqvae``, ``autoencoder``).
      epoch: the checkpoint's epoch. seed: the replica's seed. image_shape: ``(H, W, C)``.
      model_state: non-gradient state (the VQ-VAE's EMA codebook statistics) or None.
      source: the workdir or file it was read from.
      data_record: the data it trained on (its workdir's ``data.json``, kept in an exported file), or None.
    """

    family: str
    config: object
    model: object
    task: object
    params: object
    epoch: int
    seed: int
    image_shape: tuple
    model_state: object = None
    prior: tuple | None = None
    source: str = ""
    data_record: dict | None = None
    conditional = False  # not a field: CVAEModel sets it

    def __post_init__(self):
        self.image_shape = tuple(int(d) for d in self.image_shape)

    @property
    def variables(self) -> dict:
        return {"params": self.params}

    def __repr__(self) -> str:
        return (
            f"TrainedModel({self.family}, image_shape={self.image_shape}, seed={self.seed}, epoch={self.epoch}, "
            f"source={self.source!r})"
        )

    # --- the verbs: inputs checked here, the work done by each family's _methods

    def sample(self, n: int, key, labels=None, temperature: float = 1.0) -> np.ndarray:
        """``n`` samples ``[n, H, W, C]`` (decoder means) drawn with ``key`` (a key or an int seed).

        ``temperature`` scales the prior's standard deviation (Gaussian latents) or divides the PixelCNN prior's
        logits (VQ-VAE); 1 samples the model. The conditional VAE needs ``labels``. The same key, the same samples.
        """
        n, key, temperature = _check_count(n), _as_key(key), _check_temperature(temperature)
        return self._sample(n, key, self._labels(labels, n), temperature)

    def reconstruct(self, x, labels=None) -> np.ndarray:
        """Deterministic reconstructions ``[N, H, W, C]`` of images ``x`` (decoded posterior means / codes)."""
        x = self._images(x)
        return self._reconstruct(pixels_to_float(x), self._labels(labels, len(x)))

    def encode(self, x, labels=None):
        """Posterior means ``[N, D]`` (the HVAE: ``{"z1": [N, D1], "z2": [N, D2]}``; the VQ-VAE: int32 code
        indices ``[N, H/4, W/4]``; an autoencoder: its code ``[N, D]``) of images ``x``."""
        x = self._images(x)
        return self._encode(pixels_to_float(x), self._labels(labels, len(x)))

    def decode(self, z, labels=None) -> np.ndarray:
        """Images ``[N, H, W, C]`` (decoder means) of latents shaped as :meth:`encode` returns them."""
        z = self._latents(z)
        return self._decode(z, self._labels(labels, len(z)))

    def evaluate(self, x, labels=None, iwae_k: int = 0, key=None, batch_size: int = 100, k_chunk: int = 100) -> dict:
        """Test metrics of ``x`` in nats per example: exactly what ``experiments.evaluate`` reports.

        The VAE families go through :func:`vae_jax.evaluate.evaluate_runs` with this model's evaluation parts and
        the run's ``eval_batch_size``: ``n``, ``neg_elbo``, ``recon``, ``kl`` (+ ``kl_z1``, ``kl_z2``), active units
        per layer and, with ``iwae_k > 0``, ``iwae_nll`` and ``bits_per_dim``. The VQ-VAE and the autoencoders give
        their training task's test metrics (as ``summary.json``'s); they have no likelihood to bound (``iwae_k``
        must be 0).

        Args:
          key: the evaluation key (a key or an int seed); default the project's fixed
            :func:`vae_jax.evaluate.eval_key`. The dict's ``key`` says which was used.
        """
        x = self._images(x)
        labels = self._labels(labels, len(x))
        iwae_k = _check_count(iwae_k, "iwae_k", 0, "a non-negative integer (0: no IWAE bound)")
        batch_size, k_chunk = _check_count(batch_size, "batch_size"), _check_count(k_chunk, "k_chunk")
        if key is None:
            record, key = f"vae_jax.evaluate.eval_key() (seed {evaluate.EVAL_SEED})", evaluate.eval_key()
        else:
            record = f"seed {int(key)}" if isinstance(key, (int, np.integer)) else "the key passed"
            key = _as_key(key)
        data = {"x": x} if labels is None else {"x": x, "y": labels}
        return {
            **self._evaluate(data, iwae_k, key, batch_size, k_chunk),
            "key": record,
            "key_data": np.asarray(jax.random.key_data(key)).tolist(),
        }

    # --- checks at the edge

    def _images(self, x) -> np.ndarray:
        """``x`` as ``[N, H, W, C]`` float32 in [0, 1] or uint8 (uint8 converts the way the training data does)."""
        x = np.asarray(x)
        h, w, c = self.image_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape or x.shape[0] < 1:
            raise ConfigError(
                f"x must be images [N, {h}, {w}, {c}] (float in [0, 1] or uint8) for this model, "
                f"got shape {list(x.shape)} ({x.dtype})"
            )
        if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
            raise ConfigError(f"x must hold float pixels in [0, 1] or uint8 in [0, 255], got {x.dtype}")
        if x.dtype == np.uint8:
            return x
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ConfigError(f"x must hold float pixels in [0, 1], got {int(np.sum(~np.isfinite(x)))} NaN or infinite")
        low, high = float(np.min(x)), float(np.max(x))
        if not (0.0 <= low and high <= 1.0):
            raise ConfigError(
                f"x must hold float pixels in [0, 1] (or uint8 in [0, 255]), got values in [{low:.4g}, {high:.4g}]"
            )
        return x

    def _labels(self, labels, n: int):
        if labels is not None:
            raise ConfigError(f"labels: this {self.family} model is not conditional; pass labels=None")
        return None

    def _latents(self, z) -> np.ndarray:
        z, dim = np.asarray(z), self.model.latent_dim
        if z.ndim != 2 or z.shape[1] != dim or z.shape[0] < 1:
            raise ConfigError(f"z must be latents [N, {dim}] for this model, got shape {list(z.shape)}")
        return z.astype(np.float32)

    def _no(self, verb: str, why: str):
        raise ConfigError(f"{verb}: this {self.family} model {why}")

    def _evaluate(self, data, iwae_k, key, batch_size, k_chunk) -> dict:
        if iwae_k:
            self._no("iwae_k", "has no likelihood to bound; pass iwae_k=0 for its test metrics")
        fn = evaluate.make_per_example_eval(self.task.eval_fn, self.config.eval_batch_size)
        out = jax.device_get(fn(self.params, jax.tree_util.tree_map(np.asarray, data), key))
        return {"n": int(len(data["x"])), **{name: float(np.mean(v)) for name, v in out.items()}}


class GaussianVAEModel(TrainedModel):
    """The MLP and conv VAEs: z ~ N(0, I), posterior means ``[N, D]``."""

    def _sample(self, n, key, labels, temperature):
        z = arrays.standard_normal(key, (n, self.model.latent_dim)) * np.float32(temperature)
        return self._decode(z, labels)  # the CVAE's decoder takes the labels

    def _reconstruct(self, x, labels):
        return vae_tasks.reconstruct(self.model, self.params, x)

    def _encode(self, x, labels):
        return vae_tasks.encode_means(self.model, self.params, x)

    def _decode(self, z, labels):
        return vae_tasks.decode_means(self.model, self.params, z)

    def _evaluate(self, data, iwae_k, key, batch_size, k_chunk) -> dict:
        parts = FAMILIES[self.family].eval_parts(self.model, self.task, self.config)
        replicated = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], self.params)
        return evaluate.evaluate_runs(
            parts,
            replicated,
            data,
            iwae_k=iwae_k,
            eval_batch_size=self.config.eval_batch_size,
            iwae_batch_size=batch_size,
            k_chunk=k_chunk,
            key=key,
        )[0]


class CVAEModel(GaussianVAEModel):
    """The conditional VAE: every verb takes the class ``labels``."""

    conditional = True

    def _labels(self, labels, n: int) -> np.ndarray:
        classes = self.model.num_classes
        if labels is None:
            raise ConfigError(f"labels: the conditional VAE needs labels, an int or {n} ints in [0, {classes})")
        values = np.asarray(labels)
        if values.dtype == bool or not np.issubdtype(values.dtype, np.integer):
            raise ConfigError(f"labels must be integers in [0, {classes}) (the trained classes), got {labels!r}")
        values = np.full(n, values, np.int64) if values.ndim == 0 else values
        if values.shape != (n,):
            raise ConfigError(f"labels must be one int or {n} ints (one per image), got shape {list(values.shape)}")
        if values.min() < 0 or values.max() >= classes:
            bad = values[(values < 0) | (values >= classes)][0]
            raise ConfigError(f"labels must lie in [0, {classes}) (the trained classes), got {int(bad)}")
        return values.astype(np.int32)

    def _reconstruct(self, x, labels):
        return cvae_tasks.decode_means(self.model, self.params, self._encode(x, labels), labels)

    def _encode(self, x, labels):
        return cvae_tasks.encode_means(self.model, self.params, x, labels)

    def _decode(self, z, labels):
        return cvae_tasks.decode_means(self.model, self.params, z, labels)


class HVAEModel(GaussianVAEModel):
    """The two-level VAE: ancestral samples z2 ~ N(0, I), z1 ~ p(z1|z2); ``encode`` gives both layers. It
    reconstructs and decodes as the VAE."""

    def _sample(self, n, key, labels, temperature):
        return hvae_tasks.sample(self.model, self.params, key, n, temperature)

    def _encode(self, x, labels):
        return hvae_tasks.encode_layers(self.model, self.params, x)

    def _latents(self, z):
        """The decoder reads z1: ``[N, D1]``, or the dict :meth:`encode` returns."""
        return super()._latents(z["z1"] if isinstance(z, dict) and "z1" in z else z)


class VQVAEModel(TrainedModel):
    """The VQ-VAE: codes are int32 index grids ``[N, H/4, W/4]``; samples come from its PixelCNN prior, ``prior``
    ``(prior config, PixelCNN, params)`` when stage 2 ran, else None (then :meth:`sample` decodes uniform code grids
    and warns)."""

    def _sample(self, n, key, labels, temperature):
        grid = self.model.grid_shape
        if self.prior is None:
            warnings.warn(
                f"{self.source}: this VQ-VAE has no learned prior (stage 2 did not run); sampling uniform "
                "code grids, its training-time prior (temperature ignored)",
                stacklevel=3,
            )
            codes = vq_tasks.uniform_code_grids(key, n, grid, self.model.num_codes)
        else:
            _, prior_model, prior_params = self.prior
            codes = prior_tasks.sample_codes(prior_model, prior_params, key, n, grid, temperature)
        return vq_tasks.decode_indices(self.model, self.params, codes)

    def _reconstruct(self, x, labels):
        return vq_tasks.reconstruct(self.model, self.params, x)

    def _encode(self, x, labels):
        return vq_tasks.encode_indices(self.model, self.params, x)

    def _latents(self, z) -> np.ndarray:
        z, (h, w), k = np.asarray(z), self.model.grid_shape, self.model.num_codes
        wanted = f"z must be code-index grids [N, {h}, {w}] of integers in [0, {k}) for this model"
        if z.ndim != 3 or z.shape[1:] != (h, w) or len(z) < 1 or not np.issubdtype(z.dtype, np.integer):
            raise ConfigError(f"{wanted}, got shape {list(z.shape)} ({z.dtype})")
        if z.min() < 0 or z.max() >= k:
            raise ConfigError(f"{wanted}, got codes from {int(z.min())} to {int(z.max())}")
        return z.astype(np.int32)

    def _decode(self, z, labels):
        return vq_tasks.decode_indices(self.model, self.params, z)


class AutoEncoderModel(TrainedModel):
    """A deterministic autoencoder: no prior to sample from; ``encode`` gives the code ``[N, D]``."""

    def _sample(self, n, key, labels, temperature):
        self._no("sample", "has no prior over its codes to sample from (train a VAE for that)")

    def _reconstruct(self, x, labels):
        return ae_tasks.ae_reconstruct(self.model, self.params, x, self.config.output)

    def _encode(self, x, labels):
        return ae_tasks.ae_encode(self.model, self.params, x)

    def _decode(self, z, labels):
        if self.config.arch == "conv" and self.config.upsampling == "unpool":
            self._no("decode", "with --upsampling unpool needs the encoder's pooling indices; use reconstruct")
        return ae_tasks.ae_decode(self.model, self.params, z, self.config.output)


FAMILIES = {
    "vae": Family(vae_tasks.VAEConfig, vae_tasks.vae_task, GaussianVAEModel, _gaussian_parts),
    "conv_vae": Family(conv_tasks.ConvVAEConfig, conv_tasks.conv_vae_task, GaussianVAEModel, _gaussian_parts),
    "cvae": Family(cvae_tasks.CVAEConfig, cvae_tasks.cvae_task, CVAEModel, cvae_tasks.cvae_eval_parts),
    "hvae": Family(hvae_tasks.HVAEConfig, hvae_tasks.hvae_task, HVAEModel, hvae_tasks.hvae_eval_parts),
    "vqvae": Family(vq_tasks.VQVAEConfig, _build_vqvae, VQVAEModel),
    "autoencoder": Family(ae_tasks.AEConfig, ae_tasks.ae_task, AutoEncoderModel),
}
VAE_KINDS = tuple(kind for kind, family in FAMILIES.items() if family.eval_parts is not None)


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
