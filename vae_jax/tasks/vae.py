"""The MLP VAE's config and training task, plus the model queries that its figures need.

A model restored from a workdir's ``config.json`` is built exactly as it was trained.
"""

from __future__ import annotations

from typing import ClassVar

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import objectives, precision as precision_lib
from vae_jax.cli import field, require
from vae_jax.models.vae import VAE, init_params
from vae_jax.runner import Task, TrainConfig
from vae_jax.tasks.common import apply_in_batches


@dataclasses.dataclass(frozen=True)
class VAEConfig(TrainConfig):
    """The MLP VAE of Kingma & Welling (2014); the defaults are the classic 784-400-20."""

    kind: ClassVar[str] = "vae"

    latent_dim: int = field(20, "latent dimensions")
    hidden: tuple[int, ...] = field((400,), "encoder hidden widths (the decoder mirrors them)")
    likelihood: str = field("bernoulli", "decoder likelihood p(x|z)", choices=objectives.LIKELIHOODS)
    decoder_logvar: float = field(0.0, "log c of the Gaussian decoder N(f(z), cI) (gaussian likelihood only)")
    beta: float = field(1.0, "weight of the KL term (beta-VAE when > 1)")
    precision: str = field("f32", "training compute: f32, or bf16 (bfloat16 compute; float32 params, "
                           "optimizer state and losses)", choices=precision_lib.PRECISIONS)

    def validate(self) -> None:
        super().validate()
        require(self.latent_dim > 0, "latent_dim", "a positive integer", self.latent_dim)
        require(len(self.hidden) > 0 and all(w > 0 for w in self.hidden), "hidden",
                "comma-separated positive widths like 400 or 512,256", ",".join(map(str, self.hidden)))
        require(self.beta >= 0, "beta", "a non-negative number", self.beta)
        require(np.isfinite(self.decoder_logvar), "decoder_logvar", "a finite number", self.decoder_logvar)


def build_vae(config: VAEConfig, image_shape) -> VAE:
    return VAE(latent_dim=config.latent_dim, hidden=tuple(config.hidden), image_shape=tuple(image_shape))


def vae_task(config: VAEConfig, image_shape) -> tuple[VAE, Task]:
    model = build_vae(config, image_shape)
    loss_fn = objectives.make_vae_loss(
        precision_lib.compute_in(model, config.precision), config.likelihood, config.beta, config.decoder_logvar,
        dynamic_binarize=config.binarize == "dynamic",
    )
    eval_fn = objectives.make_vae_eval(model, config.likelihood, config.decoder_logvar)
    task = Task(init_params=lambda key: init_params(model, key), loss_fn=loss_fn, eval_fn=eval_fn, headline="neg_elbo")
    return model, task


# --- queries for figures (host arrays out) -------------------------------------------


def encode_means(model, params, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Posterior means ``[N, D]`` of ``x``."""
    return apply_in_batches(lambda xb: model.apply({"params": params}, xb, method=model.encode)[0], x, batch_size)


def decode_means(model, params, z: np.ndarray) -> np.ndarray:
    """Decoded images E[x|z] ``[N, H, W, C]`` in [0, 1]."""
    out = model.apply({"params": params}, jnp.asarray(z), method=model.decode)
    return np.asarray(objectives.decoder_mean(out))


def reconstruct(model, params, x: np.ndarray) -> np.ndarray:
    """Decodes the posterior means of ``x`` (the usual deterministic reconstruction)."""
    return decode_means(model, params, encode_means(model, params, x))


def sample_prior(model, params, key: jax.Array, n: int) -> np.ndarray:
    """E[x|z] for n draws z ~ N(0, I)."""
    return decode_means(model, params, jax.random.normal(key, (n, model.latent_dim)))


def interpolate(model, params, x_a: np.ndarray, x_b: np.ndarray, steps: int = 10) -> np.ndarray:
    """Decodings along the straight line between the posterior means of two images."""
    z = encode_means(model, params, np.stack([x_a, x_b]))
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return decode_means(model, params, (1.0 - t) * z[0] + t * z[1])
