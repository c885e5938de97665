"""The interface every trained family answers (:class:`TrainedModel`): sample, reconstruct, encode, decode, evaluate.

Each family's subclass lives with its task (``vae_jax.tasks.NAME``: ``GaussianVAEModel``, ``CVAEModel``,
``HVAEModel``, ``VQVAEModel``, ``AutoEncoderModel``) and does the work in its ``_sample``, ``_reconstruct``,
``_encode``, ``_decode`` and ``_evaluate``; this base class checks the inputs at the edge, in one line naming
the argument. :func:`vae_jax.load_run` (:mod:`vae_jax.trained`) reads a run from disk into one.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from vae_jax import evaluate
from vae_jax.arrays import pixels_to_float
from vae_jax.errors import ConfigError, positive_number


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


@dataclasses.dataclass(eq=False, repr=False)
class TrainedModel:
    """A trained model of any family, answering the same verbs; made by :func:`vae_jax.trained.load_run`.

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
    # ``(model, task, config) -> VAEEvalParts`` for the families with a likelihood (their experiments.evaluate
    # parts); None for the others. A staticmethod on each subclass, so a family's parts are found without a model.
    eval_parts = None

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
        n, key = _check_count(n), _as_key(key)
        temperature = positive_number(temperature, "temperature", " (1: the prior itself)")
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
