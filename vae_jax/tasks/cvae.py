"""The conditional VAE's config, objective terms and training task, plus the queries its figures need.

The CVAE follows the objective contract of :mod:`vae_jax.objectives`: the
Gaussian-VAE ``terms_fn`` and ``log_weights_fn`` read the label ``batch["y"]``
(``CVAE.conditions``) and condition both q(z|x,y) and p(x|z,y) on it; every flag of the VAE objective (likelihood,
beta and its schedule, free bits, IWAE training) applies unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import numpy as np

from vae_jax import diagnostics, evaluate
from vae_jax.arrays import apply_in_batches, standard_normal
from vae_jax.errors import ConfigError, field, require
from vae_jax.evaluate import VAEEvalParts
from vae_jax.models.cvae import CVAE
from vae_jax.models.vae import init_params
from vae_jax.protocol import Task
from vae_jax.tasks import vae as vae_tasks
from vae_jax.tasks.vae import GaussianVAEModel, VAEConfig


@dataclasses.dataclass(frozen=True)
class CVAEConfig(VAEConfig):
    """The MLP conditional VAE (the MLP VAE's flags, and ``num_classes``): a one-hot label into encoder and decoder."""

    kind: ClassVar[str] = "cvae"

    latent_dim: int = field(
        2,
        "latent dimensions; small, so that the class is left to the label (with 20, a "
        "short run encodes the class in z and the decoder ignores y)",
    )
    num_classes: int = field(
        0, "number of classes of the one-hot label (0: one more than the largest label in the data)"
    )
    workdir: str = field("runs/cvae", "output directory: config, metrics, checkpoints, figures")

    def validate(self) -> None:
        super().validate()
        require(self.num_classes >= 0, "num_classes", "a non-negative integer (0: from the data)", self.num_classes)


def with_data_classes(config: CVAEConfig, dataset) -> CVAEConfig:
    """``config`` with ``num_classes`` resolved from ``dataset``'s labels (a one-line error if it has none)."""
    if dataset.num_classes is None:
        raise ConfigError(
            f"--dataset {config.dataset}: {dataset.source} has no labels; the conditional VAE "
            "needs labelled data (mnist, a tfds set with labels, an npz with y or y_train/y_test, or a folder "
            "of class sub-folders)"
        )
    if config.num_classes == 0:
        return dataclasses.replace(config, num_classes=dataset.num_classes)
    require(
        dataset.num_classes <= config.num_classes,
        "num_classes",
        f"at least {dataset.num_classes} (the data's labels run to {dataset.num_classes - 1})",
        config.num_classes,
    )
    return config


def build_cvae(config: CVAEConfig, image_shape) -> CVAE:
    if config.num_classes <= 0:
        raise ValueError("resolve num_classes from the data first (with_data_classes)")
    return CVAE(
        latent_dim=config.latent_dim,
        hidden=tuple(config.hidden),
        image_shape=tuple(image_shape),
        num_classes=config.num_classes,
        likelihood=config.likelihood,
    )


def cvae_task(config: CVAEConfig, image_shape) -> tuple[CVAE, Task]:
    """The CVAE and its training task (batches must carry labels ``y``)."""
    model = build_cvae(config, image_shape)
    return model, config.elbo_task(model, init_params)


def cvae_eval_parts(model: CVAE, task: Task, config: CVAEConfig) -> VAEEvalParts:
    """What :func:`vae_jax.evaluate.evaluate_runs` needs: every quantity conditioned on the true label."""
    return evaluate.gaussian_vae_parts(model, task.eval_fn, config.likelihood, config.decoder_logvar)


# --- queries for figures (host arrays out) -------------------------------------------


def check_labels(model: CVAE, labels, name: str = "labels") -> np.ndarray:
    """``labels`` as int32 ``[N]`` after checking they are integers of the trained classes (a one-line error).

    A one-hot of a label outside ``[0, num_classes)`` is all zeros (or the wrong class): the decoder would
    return an image for it all the same.
    """
    values = np.asarray(labels)
    if values.ndim != 1 or values.dtype == bool or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            f"{name} must be a 1-D array of integer classes in [0, {model.num_classes}), "
            f"got {values.dtype} of shape {list(values.shape)}"
        )
    if values.size and (values.min() < 0 or values.max() >= model.num_classes):
        bad = values[(values < 0) | (values >= model.num_classes)][0]
        raise ValueError(f"{name} must lie in [0, {model.num_classes}) (the trained classes), got {int(bad)}")
    return values.astype(np.int32)


def encode_means(model: CVAE, params, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Posterior means ``[N, D]`` of q(z|x,y)."""
    return diagnostics.encode_posteriors(model, params, x, check_labels(model, y, "y"), batch_size=batch_size)[0]


def decode_means(model: CVAE, params, z: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """E[x|z,y] ``[N, H, W, C]`` in [0, 1] for codes ``z`` ``[N, D]`` and labels ``y`` ``[N]``."""
    return apply_in_batches(
        vae_tasks.query_decoder_mean,
        model,
        params,
        np.asarray(z, np.float32),
        check_labels(model, y, "y"),
        batch_size=batch_size,
    )


def sample_class(model: CVAE, params, key: jax.Array, labels: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """E[x|z,y] ``[N, H, W, C]`` for z ~ N(0, I), one draw per label of int ``[N]`` ``labels`` (else ``ValueError``)."""
    labels = check_labels(model, labels)
    z = standard_normal(key, (len(labels), model.latent_dim))
    return decode_means(model, params, z, labels, batch_size)


def interpolate_in_class(model: CVAE, params, z_a: np.ndarray, z_b: np.ndarray, label: int, steps: int = 10):
    """Decodings of the straight line from ``z_a`` to ``z_b`` ``[D]`` with the label held at ``label``."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return decode_means(model, params, (1.0 - t) * z_a + t * z_b, np.full(steps, label))


def collapse_diagnostics(
    model: CVAE, params, x: np.ndarray, y: np.ndarray, key: jax.Array, batch_size: int = 500
) -> dict:
    """:func:`vae_jax.diagnostics.collapse_diagnostics` of q(z|x,y) on labelled images: ``{"z": ...}``.

    Each image is encoded with its true label. The mutual-information
    estimate is I_q(x; z) over these pairs; z repeating the class (what a
    wide latent does when the decoder ignores y) counts in it too.
    """
    means, logvars = diagnostics.encode_posteriors(model, params, x, check_labels(model, y, "y"), batch_size=batch_size)
    return {"z": diagnostics.collapse_diagnostics(means, logvars, key)}


# --- the trained model (vae_jax.load_run) ---------------------------------------------------


class CVAEModel(GaussianVAEModel):
    """The conditional VAE: every verb takes the class ``labels``."""

    conditional = True
    eval_parts = staticmethod(cvae_eval_parts)

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
        return decode_means(self.model, self.params, self._encode(x, labels), labels)

    def _encode(self, x, labels):
        return encode_means(self.model, self.params, x, labels)

    def _decode(self, z, labels):
        return decode_means(self.model, self.params, z, labels)
