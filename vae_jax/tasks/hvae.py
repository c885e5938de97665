"""The two-level hierarchical VAE's config, objective terms and training task, plus its figure queries.

Estimators (see :mod:`vae_jax.models.hvae` for the model). One pass draws
z1 ~ q(z1|x) and then z2 ~ q(z2|z1) by reparameterization. The negative ELBO

    -ELBO = E_q[-log p(x|z1)] + E_q[log q(z1|x) - log p(z1|z2)] + E_{q(z1|x)}[KL(q(z2|z1) || p(z2))]

is estimated per example as

* ``recon`` = -log p(x|z1): single sample;
* ``kl_z1`` = log q(z1|x) - log p(z1|z2): a **single-sample estimate**. z2 ~ q(z2|z1) depends on the very
  z1 being scored, so substituting the analytic KL(q(z1|x) || p(z1|z2)) would average log p(z1'|z2) over
  z1' independent of z2 and bias the ELBO; the log-density difference of the one sample is unbiased (it
  can be negative for one sample; its expectation is not).
* ``kl_z2`` = KL(q(z2|z1) || N(0, I)): **analytic given z1** (both are Gaussians once z1 is fixed).

``kl = kl_z1 + kl_z2``; ``kl_per_dim`` ``[B, D1 + D2]`` holds the D1 per-dimension terms of z1, then the D2
of z2. Free bits on the z1 dimensions therefore floor a noisy single-sample estimate; prefer free bits 0
for this family or read them as a heuristic.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import diagnostics, losses, objectives
from vae_jax.arrays import apply_in_batches, bare_params
from vae_jax.errors import field, require
from vae_jax.evaluate import VAEEvalParts
from vae_jax.models.hvae import HVAE
from vae_jax.models.vae import init_params
from vae_jax.protocol import Task
from vae_jax.tasks.vae import GaussianVAEModel, VAEObjectiveConfig, require_widths


@dataclasses.dataclass(frozen=True)
class HVAEConfig(VAEObjectiveConfig):
    """A two-level MLP VAE x -> z1 -> z2 (the lectures' hierarchical VAE; Burda et al. 2016's 2-layer MNIST model)."""

    kind: ClassVar[str] = "hvae"

    latent_dim: int = field(20, "dimensions of z1, the bottom latent layer (the decoder reads z1)")
    top_latent_dim: int = field(10, "dimensions of z2, the top latent layer (prior N(0, I))")
    hidden: tuple[int, ...] = field((400,), "hidden widths of q(z1|x) (the decoder p(x|z1) mirrors them)")
    top_hidden: tuple[int, ...] = field((100,), "hidden widths of q(z2|z1) and p(z1|z2)")
    workdir: str = field(
        "runs/hvae",
        "output directory: the HVAE in WORKDIR/hvae, the matched one-level VAE in "
        "WORKDIR/vae, the comparison and figures on top",
    )

    def validate(self) -> None:
        super().validate()
        require(self.latent_dim > 0, "latent_dim", "a positive integer", self.latent_dim)
        require(self.top_latent_dim > 0, "top_latent_dim", "a positive integer", self.top_latent_dim)
        require_widths("hidden", self.hidden)
        require_widths("top_hidden", self.top_hidden)


def build_hvae(config: HVAEConfig, image_shape) -> HVAE:
    return HVAE(
        latent_dim=config.latent_dim,
        top_latent_dim=config.top_latent_dim,
        hidden=tuple(config.hidden),
        top_hidden=tuple(config.top_hidden),
        image_shape=tuple(image_shape),
        likelihood=config.likelihood,
    )


def hvae_terms_from_pass(out: dict, x: jax.Array, likelihood: str, decoder_logvar: float) -> dict:
    """The per-example terms (module docstring) from one pass ``out`` of :meth:`HVAE.__call__`."""
    kl_z1_per_dim = losses.gaussian_log_prob(
        out["z1"], out["q1_mean"], out["q1_logvar"], event_ndim=0
    ) - losses.gaussian_log_prob(out["z1"], out["p1_mean"], out["p1_logvar"], event_ndim=0)  # [B, D1]
    kl_z2_per_dim = losses.gaussian_kl_between(out["q2_mean"], out["q2_logvar"], 0.0, 0.0, event_ndim=0)  # [B, D2]
    kl_z1 = jnp.sum(kl_z1_per_dim, axis=-1)
    kl_z2 = jnp.sum(kl_z2_per_dim, axis=-1)
    return {
        "recon": objectives.reconstruction_nll(likelihood, out["decoder_out"], x, decoder_logvar),
        "kl": kl_z1 + kl_z2,
        "kl_per_dim": jnp.concatenate([kl_z1_per_dim, kl_z2_per_dim], axis=-1),
        "kl_z1": kl_z1,
        "kl_z2": kl_z2,
    }


def make_hvae_terms(model: HVAE, likelihood: str = "bernoulli", decoder_logvar: float = 0.0):
    """``terms_fn(params, batch, key)`` of the HVAE: recon, kl, kl_per_dim, kl_z1, kl_z2 ``[B]`` (module docstring)."""

    def terms_fn(params, batch, key):
        out = model.apply({"params": params}, batch["x"], key)
        return hvae_terms_from_pass(out, batch["x"], likelihood, decoder_logvar)

    return terms_fn


def make_hvae_log_weights(model: HVAE, likelihood: str = "bernoulli", decoder_logvar: float = 0.0):
    """``log_weights_fn(params, batch, key, k) -> [B, k]`` of the HVAE: for (z1_j, z2_j) ~ q(z1|x) q(z2|z1),

        log w_j = log p(x|z1_j) + log p(z1_j|z2_j) + log N(z2_j; 0, I) - log q(z1_j|x) - log q(z2_j|z1_j),

    every density evaluated at the samples, as the IWAE bound requires (Burda et al. 2016, section 3).
    """

    def log_weights_fn(params, batch, key, k):
        x = batch["x"]
        apply = lambda method, *args: model.apply({"params": params}, *args, method=method)  # noqa: E731
        q1_mean, q1_logvar = apply(model.encode, x)  # [B, D1]
        key1, key2 = jax.random.split(key)
        z1 = objectives.posterior_samples(key1, q1_mean, q1_logvar, k)  # [B, k, D1]
        z1_flat = z1.reshape(-1, z1.shape[-1])
        q2_mean, q2_logvar = apply(model.encode_top, z1_flat)  # [B*k, D2]
        z2 = losses.reparameterize(key2, q2_mean, q2_logvar)
        p1_mean, p1_logvar = apply(model.prior_bottom, z2)  # [B*k, D1]
        decoder_out = apply(model.decode, z1_flat)
        log_px_z1 = -objectives.reconstruction_nll(likelihood, decoder_out, jnp.repeat(x, k, axis=0), decoder_logvar)
        log_w = (
            log_px_z1
            + losses.gaussian_log_prob(z1_flat, p1_mean, p1_logvar)
            + losses.standard_normal_log_prob(z2)
            - losses.gaussian_log_prob(z1, q1_mean[:, None], q1_logvar[:, None]).reshape(-1)
            - losses.gaussian_log_prob(z2, q2_mean, q2_logvar)
        )
        return log_w.reshape(x.shape[0], k)

    return log_weights_fn


def hvae_task(config: HVAEConfig, image_shape) -> tuple[HVAE, Task]:
    model = build_hvae(config, image_shape)
    return model, config.elbo_task(model, init_params, make_hvae_terms, make_hvae_log_weights)


def posterior_means(model: HVAE, params, x: jax.Array) -> dict:
    """Per-layer posterior means: ``z1`` = E[z1|x] ``[B, D1]``; ``z2`` = mean of q(z2 | z1 = E[z1|x]) ``[B, D2]``.

    E[z2|x] has no closed form; the mean at the mean of z1 is its usual deterministic stand-in.
    """
    z1_mean, _ = model.apply({"params": params}, x, method=model.encode)
    z2_mean, _ = model.apply({"params": params}, z1_mean, method=model.encode_top)
    return {"z1": z1_mean, "z2": z2_mean}


def hvae_eval_parts(model: HVAE, task: Task, config: HVAEConfig) -> VAEEvalParts:
    """What :func:`vae_jax.evaluate.evaluate_runs` needs, with active units per layer."""
    return VAEEvalParts(
        eval_fn=task.eval_fn,
        log_weights_fn=make_hvae_log_weights(model, config.likelihood, config.decoder_logvar),
        posterior_mean_fn=lambda params, batch: posterior_means(model, params, batch["x"]),
    )


# --- queries for figures (host arrays out); the HVAE reconstructs and decodes with ``vae_jax.tasks.vae``'s queries


def encode_layers(model: HVAE, params, x: np.ndarray, batch_size: int = 1000) -> dict:
    """:func:`posterior_means` of images ``x``: ``{"z1": [N, D1], "z2": [N, D2]}`` on the host."""
    return apply_in_batches(posterior_means, model, params, x, batch_size=batch_size)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _sample(model: HVAE, params, key, n: int, temperature):
    return objectives.decoder_mean(
        model.apply({"params": params}, key, n, temperature, method=model.sample), model.image_shape[-1]
    )


def sample(model: HVAE, params, key: jax.Array, n: int, temperature: float = 1.0) -> np.ndarray:
    """E[x|z1] for ancestral draws z2 ~ N(0, I), z1 ~ p(z1|z2): ``[n, H, W, C]`` in [0, 1].

    ``temperature`` scales both layers' prior standard deviations (:meth:`HVAE.sample`).
    """
    return np.asarray(_sample(model, bare_params(params), key, n, jnp.float32(temperature)))


def _collapse_layers(model: HVAE, params, key, x):
    """Per image: q(z1|x) and its objective's per-dimension z1 terms (one pass from ``key``); q(z2|E[z1|x])."""
    q1_mean, q1_logvar = model.apply({"params": params}, x, method=model.encode)
    q2_mean, q2_logvar = model.apply({"params": params}, q1_mean, method=model.encode_top)
    out = model.apply({"params": params}, x, key)
    kl_z1 = hvae_terms_from_pass(out, x, model.likelihood, 0.0)["kl_per_dim"][:, : model.latent_dim]
    return {"q1_mean": q1_mean, "q1_logvar": q1_logvar, "kl_z1": kl_z1, "q2_mean": q2_mean, "q2_logvar": q2_logvar}


def collapse_diagnostics(model: HVAE, params, x: np.ndarray, key: jax.Array, batch_size: int = 500) -> dict:
    """:func:`vae_jax.diagnostics.collapse_diagnostics` of each latent layer on images ``x``: ``{"z1": ..., "z2": ...}``.

    z1: q(z1|x) with the objective's single-sample per-dimension terms log q(z1|x) - log p(z1|z2) (no closed
    form against the learned prior; batch i draws its pass from ``fold_in(pass_key, i)``). z2: q(z2|z1) at
    z1 = E[z1|x] (as in :func:`posterior_means`), against N(0, I) in closed form.
    """
    pass_key, key1, key2 = jax.random.split(key, 3)
    layers = apply_in_batches(_collapse_layers, model, params, x, batch_size=batch_size, key=pass_key)
    return {
        "z1": diagnostics.collapse_diagnostics(
            layers["q1_mean"], layers["q1_logvar"], key1, kl_per_dim=layers["kl_z1"]
        ),
        "z2": diagnostics.collapse_diagnostics(layers["q2_mean"], layers["q2_logvar"], key2),
    }


# --- the trained model (vae_jax.load_run) ---------------------------------------------------


class HVAEModel(GaussianVAEModel):
    """The two-level VAE: ancestral samples z2 ~ N(0, I), z1 ~ p(z1|z2); ``encode`` gives both layers. It
    reconstructs and decodes as the VAE."""

    eval_parts = staticmethod(hvae_eval_parts)

    def _sample(self, n, key, labels, temperature):
        return sample(self.model, self.params, key, n, temperature)

    def _encode(self, x, labels):
        return encode_layers(self.model, self.params, x)

    def _latents(self, z):
        """The decoder reads z1: ``[N, D1]``, or the dict :meth:`encode` returns."""
        return super()._latents(z["z1"] if isinstance(z, dict) and "z1" in z else z)
