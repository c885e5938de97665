"""The MLP VAE's config and training task, plus the model queries that its figures need.

The queries (``encode_means``, ``decode_means``, ``reconstruct``, ...) serve every
:class:`~vae_jax.models.vae.GaussianVAE`: the conv VAE, and the HVAE's bottom layer, use them unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import numpy as np

from vae_jax import arrays, compiling, diagnostics, evaluate, objectives, schedules
from vae_jax import precision as precision_lib
from vae_jax.arrays import apply_in_batches, bare_params
from vae_jax.errors import field, require, require_list
from vae_jax.models.vae import VAE, init_params
from vae_jax.protocol import Task, TrainConfig
from vae_jax.trained_model import TrainedModel


@dataclasses.dataclass(frozen=True)
class VAEObjectiveConfig(TrainConfig):
    """The flags of the VAE objective, shared by every VAE family (see :func:`objectives.make_elbo_objective`)."""

    kind: ClassVar[str] = "vae_objective"

    likelihood: str = field(
        "bernoulli",
        "decoder likelihood p(x|z): bernoulli (logits); gaussian N(mean, cI) with fixed c; "
        "gaussian_shared_var (one learned variance for all pixels, sigma-VAE); gaussian_pixel_var (per-pixel "
        "variance map)",
        choices=objectives.LIKELIHOODS,
    )
    decoder_logvar: float = field(
        0.0,
        "log c of the fixed-variance Gaussian decoder N(f(z), cI) (--likelihood gaussian); the loss is "
        "C*||x - f(z)||^2 + KL + const with C = 1/(2c): smaller c weighs reconstruction more against the KL",
    )
    beta: float = field(1.0, "weight of the KL term (beta-VAE when > 1); the end value of a beta schedule")
    beta_schedule: str = field(
        "constant",
        "beta over training steps: constant, linear warm-up from 0 "
        "(--beta-warmup-steps) or cyclical annealing (--beta-cycle-steps)",
        choices=schedules.SCHEDULES,
    )
    beta_warmup_steps: int = field(0, "steps of the linear beta warm-up (--beta-schedule linear)")
    beta_cycle_steps: int = field(0, "steps per cycle of cyclical annealing (--beta-schedule cyclical)")
    beta_ramp_fraction: float = field(0.5, "fraction of each cycle in which beta rises from 0 (cyclical)")
    free_bits: float = field(
        0.0, "free bits: a floor in nats on each latent dimension's KL term in the objective (per example; 0 = off)"
    )
    iwae_k: int = field(
        1,
        "train on the importance-weighted bound with k samples (IWAE, k > 1; needs beta 1, "
        "a constant schedule and no free bits)",
    )
    precision: str = precision_lib.config_field()

    def validate(self) -> None:
        super().validate()
        require(np.isfinite(self.beta) and self.beta >= 0, "beta", "a non-negative number", self.beta)
        require(np.isfinite(self.decoder_logvar), "decoder_logvar", "a finite number", self.decoder_logvar)
        steps = {"linear": "beta_warmup_steps", "cyclical": "beta_cycle_steps"}.get(self.beta_schedule)
        if steps:
            expected = f"a positive number of steps with --beta-schedule {self.beta_schedule}"
            require(getattr(self, steps) > 0, steps, expected, getattr(self, steps))
        if self.beta_schedule == "cyclical":
            require(0 < self.beta_ramp_fraction <= 1, "beta_ramp_fraction", "in (0, 1]", self.beta_ramp_fraction)
        require(
            np.isfinite(self.free_bits) and self.free_bits >= 0,
            "free_bits",
            "a non-negative number of nats",
            self.free_bits,
        )
        require(self.iwae_k >= 1, "iwae_k", "a positive integer", self.iwae_k)
        if self.iwae_k > 1:
            require(
                self.beta == 1 and self.beta_schedule == "constant" and self.free_bits == 0,
                "iwae_k",
                "1 unless --beta 1, --beta-schedule constant and --free-bits 0 (the IWAE bound has no KL "
                "term to weigh)",
                self.iwae_k,
            )

    def beta_fn(self) -> schedules.BetaSchedule:
        return schedules.make_beta_schedule(
            self.beta_schedule, self.beta, self.beta_warmup_steps, self.beta_cycle_steps, self.beta_ramp_fraction
        )

    def objective(self, terms_fn, log_weights_fn=None):
        """``(loss_fn, eval_fn)`` of :func:`objectives.make_elbo_objective` as these flags set it."""
        return objectives.make_elbo_objective(
            terms_fn,
            log_weights_fn,
            beta_schedule=None if self.iwae_k > 1 else self.beta_fn(),
            free_bits=self.free_bits,
            iwae_k=self.iwae_k,
            dynamic_binarize=self.binarize == "dynamic",
        )

    def elbo_task(
        self,
        model,
        init_params,
        make_terms=objectives.make_gaussian_vae_terms,
        make_log_weights=objectives.make_gaussian_vae_log_weights,
    ) -> Task:
        """The training :class:`Task` of ``model`` under these flags, its headline the negative ELBO.

        ``make_terms`` / ``make_log_weights``: a family's ``(model, likelihood, decoder_logvar) ->
        terms_fn / log_weights_fn`` (:mod:`vae_jax.objectives`; the Gaussian VAE's by default). The training
        loss computes in ``--precision`` (:func:`vae_jax.precision.compute_in`), evaluation in float32.
        """

        def objective(net):
            return self.objective(
                make_terms(net, self.likelihood, self.decoder_logvar),
                make_log_weights(net, self.likelihood, self.decoder_logvar),
            )

        loss_fn, _ = objective(precision_lib.compute_in(model, self.precision))
        _, eval_fn = objective(model)
        return Task(
            init_params=lambda key: init_params(model, key), loss_fn=loss_fn, eval_fn=eval_fn, headline="neg_elbo"
        )


def require_widths(name: str, widths) -> None:
    """A one-line error naming ``--name`` unless ``widths`` are one or more positive MLP layer widths."""
    require_list(name, widths, lambda w: w > 0, "comma-separated positive widths like 400 or 512,256")


@dataclasses.dataclass(frozen=True)
class VAEConfig(VAEObjectiveConfig):
    """The MLP VAE of Kingma & Welling (2014); the defaults are the classic 784-400-20."""

    kind: ClassVar[str] = "vae"

    latent_dim: int = field(20, "latent dimensions")
    hidden: tuple[int, ...] = field((400,), "encoder hidden widths (the decoder mirrors them)")

    def validate(self) -> None:
        super().validate()
        require(self.latent_dim > 0, "latent_dim", "a positive integer", self.latent_dim)
        require_widths("hidden", self.hidden)


def build_vae(config: VAEConfig, image_shape) -> VAE:
    return VAE(
        latent_dim=config.latent_dim,
        hidden=tuple(config.hidden),
        image_shape=tuple(image_shape),
        likelihood=config.likelihood,
    )


def vae_task(config: VAEConfig, image_shape) -> tuple[VAE, Task]:
    model = build_vae(config, image_shape)
    return model, config.elbo_task(model, init_params)


# --- queries for figures (host arrays out) -------------------------------------------


def query_decoder_mean(model, params, z, *conditions):
    """E[x|z] of any :class:`~vae_jax.models.vae.GaussianVAE` (the CVAE's labels as ``conditions``)."""
    decoder_out = model.apply({"params": params}, z, *conditions, method=model.decode)
    return objectives.decoder_mean(decoder_out, model.image_shape[-1])


def _reconstruct(model, params, x):
    mean, _ = model.apply({"params": params}, x, method=model.encode)
    return query_decoder_mean(model, params, mean)


@compiling.jit_run_once(static_argnums=(0, 3))
def _prior_samples(model, params, key, n: int):
    return query_decoder_mean(model, params, jax.random.normal(key, (n, model.latent_dim)))


def encode_means(model, params, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Posterior means ``[N, D]`` of ``x`` (the program :func:`vae_jax.diagnostics.encode_posteriors` runs)."""
    return diagnostics.encode_posteriors(model, params, x, batch_size=batch_size)[0]


def decode_means(model, params, z: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Decoded images E[x|z] ``[N, H, W, C]`` in [0, 1]."""
    return apply_in_batches(query_decoder_mean, model, params, np.asarray(z, np.float32), batch_size=batch_size)


def reconstruct(model, params, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Decodes the posterior means of ``x`` (the usual deterministic reconstruction)."""
    return apply_in_batches(_reconstruct, model, params, x, batch_size=batch_size)


def sample_prior(model, params, key: jax.Array, n: int) -> np.ndarray:
    """E[x|z] for n draws z ~ N(0, I)."""
    return np.asarray(_prior_samples(model, bare_params(params), key, n))


def interpolate(model, params, x_a: np.ndarray, x_b: np.ndarray, steps: int = 10) -> np.ndarray:
    """Decodings along the straight line between the posterior means of two images."""
    z = encode_means(model, params, np.stack([x_a, x_b]))
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return decode_means(model, params, (1.0 - t) * z[0] + t * z[1])


# --- the trained model (vae_jax.load_run) ---------------------------------------------------


def gaussian_eval_parts(model, task: Task, config) -> evaluate.VAEEvalParts:
    """:func:`vae_jax.evaluate.gaussian_vae_parts` of an MLP or conv VAE run (a conv preset fixes the likelihood)."""
    resolved = config.resolved() if hasattr(config, "resolved") else config
    return evaluate.gaussian_vae_parts(model, task.eval_fn, resolved.likelihood, resolved.decoder_logvar)


class GaussianVAEModel(TrainedModel):
    """The MLP and conv VAEs: z ~ N(0, I), posterior means ``[N, D]``."""

    eval_parts = staticmethod(gaussian_eval_parts)

    def _sample(self, n, key, labels, temperature):
        z = arrays.standard_normal(key, (n, self.model.latent_dim)) * np.float32(temperature)
        return self._decode(z, labels)  # the CVAE's decoder takes the labels

    def _reconstruct(self, x, labels):
        return reconstruct(self.model, self.params, x)

    def _encode(self, x, labels):
        return encode_means(self.model, self.params, x)

    def _decode(self, z, labels):
        return decode_means(self.model, self.params, z)

    def _evaluate(self, data, iwae_k, key, batch_size, k_chunk) -> dict:
        parts = self.eval_parts(self.model, self.task, self.config)
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
