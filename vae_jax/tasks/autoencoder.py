"""Deterministic autoencoders (plain, denoising, masked, contractive): config, training task, figure queries."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import corruption, losses, objectives, penalties
from vae_jax import precision as precision_lib
from vae_jax.arrays import apply_in_batches
from vae_jax.errors import field, require, require_list
from vae_jax.models.autoencoder import ARCHS, UPSAMPLINGS, AutoEncoder, conv_level_sizes
from vae_jax.models.autoencoder import init_params as init_autoencoder_params
from vae_jax.protocol import Task, TrainConfig
from vae_jax.trained_model import TrainedModel

AE_VARIANTS = ("plain", "denoising", "masked", "contractive")
AE_LOSSES = ("bce", "mse")
AE_OUTPUTS = ("sigmoid", "linear")
MASKED_LOSS_ON = ("masked", "all")
AE_HEADLINE = {"plain": "psnr", "denoising": "denoised_psnr", "masked": "inpaint_psnr", "contractive": "psnr"}


@dataclasses.dataclass(frozen=True)
class AEConfig(TrainConfig):
    """A deterministic autoencoder and the variant that shapes what it learns.

    ``plain`` reconstructs its input; ``denoising`` reconstructs the clean
    image from a corrupted one (``--noise``); ``masked`` fills in random
    square patches (``--mask-ratio``, ``--patch-size``); ``contractive`` adds
    ``--contractive-weight * ||dz/dx||_F^2`` to the reconstruction loss.
    """

    kind: ClassVar[str] = "autoencoder"

    workdir: str = field("runs/autoencoder", "output directory: config, metrics, checkpoints, figures")
    variant: str = field("plain", "which autoencoder to train", choices=AE_VARIANTS)
    arch: str = field("mlp", "encoder/decoder architecture", choices=ARCHS)
    latent_dim: int = field(32, "code dimensions")
    hidden: tuple[int, ...] = field((512, 256), "MLP encoder widths, the decoder mirrors them (empty: linear AE)")
    channels: tuple[int, ...] = field((32, 64), "conv channels per down-block (conv + ReLU + 2x2 max pool)")
    upsampling: str = field("transpose", "conv decoder's way up", choices=UPSAMPLINGS)
    loss: str = field("bce", "reconstruction loss per pixel, summed over pixels", choices=AE_LOSSES)
    output: str = field(
        "sigmoid", "image = sigmoid(decoder output), or the output itself (linear; mse only)", choices=AE_OUTPUTS
    )
    noise: str = field("gaussian", "denoising: the corruption", choices=corruption.NOISES)
    noise_std: float = field(0.5, "denoising: std of the gaussian noise")
    noise_rate: float = field(0.25, "denoising: fraction of pixels hit by salt_and_pepper or dropout")
    mask_ratio: float = field(0.5, "masked: fraction of patches masked")
    patch_size: int = field(4, "masked: side of the square patches in pixels")
    masked_loss: str = field(
        "masked", "masked: train on the masked pixels only or on all pixels", choices=MASKED_LOSS_ON
    )
    contractive_weight: float = field(0.01, "contractive: lambda in recon + lambda * ||dz/dx||_F^2")
    contractive_method: str = field(
        "exact", "contractive: exact Jacobian or Hutchinson estimate", choices=penalties.CONTRACTIVE_METHODS
    )
    hutchinson_samples: int = field(1, "contractive: random probes per example for --contractive-method hutchinson")
    precision: str = precision_lib.config_field("bfloat16 encoder and decoder")

    def validate(self) -> None:
        super().validate()
        for name, choices in (
            ("variant", AE_VARIANTS),
            ("arch", ARCHS),
            ("upsampling", UPSAMPLINGS),
            ("loss", AE_LOSSES),
            ("output", AE_OUTPUTS),
            ("noise", corruption.NOISES),
            ("masked_loss", MASKED_LOSS_ON),
            ("contractive_method", penalties.CONTRACTIVE_METHODS),
        ):
            value = getattr(self, name)
            require(value in choices, name, "one of " + ", ".join(choices), value)
        require(self.latent_dim > 0, "latent_dim", "a positive integer", self.latent_dim)
        require(
            all(w > 0 for w in self.hidden),
            "hidden",
            "comma-separated positive widths like 512,256 (or empty for a linear AE)",
            ",".join(map(str, self.hidden)),
        )
        require_list("channels", self.channels, lambda c: c > 0, "comma-separated positive channel counts like 32,64")
        require(
            not (self.output == "linear" and self.loss == "bce"),
            "output",
            "sigmoid with --loss bce (a linear output has no Bernoulli likelihood)",
            self.output,
        )
        require(
            math.isfinite(self.noise_std) and self.noise_std >= 0, "noise_std", "a non-negative number", self.noise_std
        )
        require(0.0 <= self.noise_rate <= 1.0, "noise_rate", "a fraction in [0, 1]", self.noise_rate)
        require(0.0 < self.mask_ratio < 1.0, "mask_ratio", "a fraction strictly between 0 and 1", self.mask_ratio)
        require(self.patch_size > 0, "patch_size", "a positive integer", self.patch_size)
        require(
            math.isfinite(self.contractive_weight) and self.contractive_weight >= 0,
            "contractive_weight",
            "a non-negative number",
            self.contractive_weight,
        )
        require(self.hutchinson_samples > 0, "hutchinson_samples", "a positive integer", self.hutchinson_samples)

    def validate_for(self, image_shape) -> None:
        """Checks the settings that depend on the data's ``(H, W, C)``."""
        h, w = image_shape[:2]
        require(self.patch_size <= min(h, w), "patch_size", f"at most {min(h, w)} for {h}x{w} images", self.patch_size)
        if self.arch == "conv":
            smallest = conv_level_sizes(h, w, len(self.channels))[-2]
            require(
                min(smallest) >= 2,
                "channels",
                f"few enough down-blocks for {h}x{w} images (each halves the size)",
                ",".join(map(str, self.channels)),
            )


def build_autoencoder(config: AEConfig, image_shape) -> AutoEncoder:
    hidden = config.channels if config.arch == "conv" else config.hidden
    return AutoEncoder(
        latent_dim=config.latent_dim,
        arch=config.arch,
        hidden=tuple(hidden),
        image_shape=tuple(image_shape),
        upsampling=config.upsampling,
    )


def decoder_image(output: str, decoder_out: jax.Array) -> jax.Array:
    """The image a decoder output stands for: ``sigmoid(out)`` in [0, 1], or ``out`` itself (``linear``)."""
    return objectives.decoder_mean(decoder_out) if output == "sigmoid" else decoder_out


def ae_reconstruction_loss(
    config: AEConfig, decoder_out: jax.Array, x: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Per-example reconstruction loss ``[B]`` of the clean ``x``, over the pixels where ``mask`` is 1 (all if None).

    ``bce``: :func:`losses.bernoulli_nll` of the logits; ``mse``: the squared
    error of the image (:func:`decoder_image`) summed over pixels.
    """
    if config.loss == "bce":
        return (
            losses.bernoulli_nll(decoder_out, x) if mask is None else losses.masked_bernoulli_nll(decoder_out, x, mask)
        )
    image = decoder_image(config.output, decoder_out)
    return losses.squared_error(image, x) if mask is None else losses.masked_squared_error(image, x, mask)


def make_ae_terms(model: AutoEncoder, config: AEConfig, image_shape, evaluation: bool = False):
    """``terms_fn(params, x, key) -> dict of [B]`` per-example terms of the variant's objective.

    Always holds ``loss`` (what training minimises) and ``recon``. The key
    drives the corruption (denoising, masked) or the Hutchinson probes. With
    ``evaluation`` it adds the image-quality metrics: ``mse``/``psnr`` of the
    reconstruction of the clean input, and per variant ``noisy_psnr``,
    ``denoised_mse``, ``denoised_psnr`` (denoising); ``masked_recon``,
    ``all_recon`` (also in training), ``inpaint_mse``, ``inpaint_psnr``,
    ``masked_input_psnr`` on the masked region (masked); ``jacobian_fro2``,
    always exact (contractive). Training terms run the network in ``config.precision``
    (:func:`vae_jax.precision.compute_in`), evaluation terms in float32.
    """
    variant = config.variant
    noise_fn = corruption.make_noise_fn(config.noise, config.noise_std, config.noise_rate)
    hw = tuple(image_shape[:2])

    network = precision_lib.compute_in(model, "f32" if evaluation else config.precision)  # evaluation: float32

    def apply(params, x):
        return network.apply({"params": params}, x)

    def encode_one(params):
        return lambda xi: network.apply({"params": params}, xi[None], method=model.encode)[0]

    def terms_fn(params, x, key):
        if variant == "denoising":
            x_in = noise_fn(key, x)
        elif variant == "masked":
            mask = corruption.random_patch_mask(key, x.shape[:1], hw, config.mask_ratio, config.patch_size)
            x_in = corruption.apply_mask(x, mask)
        else:
            x_in = x
        decoder_out, _ = apply(params, x_in)  # [B, H, W, C], [B, D]
        recon = ae_reconstruction_loss(config, decoder_out, x)
        terms = {"recon": recon}
        if variant == "masked":
            terms["masked_recon"] = ae_reconstruction_loss(config, decoder_out, x, mask)
            terms["all_recon"] = recon
            terms["loss"] = terms["masked_recon"] if config.masked_loss == "masked" else recon
        elif variant == "contractive":
            penalty = penalties.contractive_penalty(
                encode_one(params), x, config.contractive_method, key, config.hutchinson_samples
            )
            terms["penalty"] = penalty
            terms["loss"] = recon + config.contractive_weight * penalty
        else:
            terms["loss"] = recon
        if not evaluation:
            return terms

        output = decoder_image(config.output, decoder_out)
        reconstructs_x = variant in ("plain", "contractive")  # else the output is of a corrupted input
        clean_output = output if reconstructs_x else decoder_image(config.output, apply(params, x)[0])
        terms["mse"] = losses.mean_squared_error(clean_output, x)
        terms["psnr"] = losses.psnr_from_mse(terms["mse"])
        if variant == "denoising":
            terms["noisy_psnr"] = losses.psnr(x_in, x)
            terms["denoised_mse"] = losses.mean_squared_error(output, x)
            terms["denoised_psnr"] = losses.psnr_from_mse(terms["denoised_mse"])
        elif variant == "masked":
            terms["inpaint_mse"] = losses.masked_mean_squared_error(output, x, mask)
            terms["inpaint_psnr"] = losses.psnr_from_mse(terms["inpaint_mse"])
            terms["masked_input_psnr"] = losses.psnr_from_mse(losses.masked_mean_squared_error(x_in, x, mask))
        elif variant == "contractive":  # the exact norm, also when training uses the Hutchinson estimate
            exact = config.contractive_method == "exact"
            terms["jacobian_fro2"] = (
                terms["penalty"] if exact else penalties.jacobian_sq_frobenius(encode_one(params), x)
            )
        return terms

    return terms_fn


def ae_task(config: AEConfig, image_shape) -> tuple[AutoEncoder, Task]:
    """The model and the :class:`Task` (loss, per-example test metrics) of ``config``'s autoencoder."""
    config.validate_for(image_shape)
    model = build_autoencoder(config, image_shape)
    train_terms = make_ae_terms(model, config, image_shape)
    eval_terms = make_ae_terms(model, config, image_shape, evaluation=True)
    dynamic_binarize = config.binarize == "dynamic"

    def loss_fn(params, batch, key, step):
        del step
        x, terms_key = objectives.binarize_batch(key, batch["x"], dynamic_binarize)
        metrics = {name: jnp.mean(values) for name, values in train_terms(params, x, terms_key).items()}
        return metrics["loss"], metrics

    def eval_fn(params, batch, key):
        # key is the runner's fixed evaluation key (folded with the batch index): repeatable corruptions.
        return eval_terms(params, batch["x"], key)

    task = Task(
        init_params=lambda key: init_autoencoder_params(model, key),
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        headline=AE_HEADLINE[config.variant],
    )
    return model, task


# --- autoencoder queries for figures (host arrays out) --------------------------------


def _ae_code(model: AutoEncoder, params, x):
    return model.apply({"params": params}, x, method=model.encode)


def _ae_decode(model: AutoEncoder, params, z, output: str):
    return decoder_image(output, model.apply({"params": params}, z, method=model.decode))


def _ae_reconstruct(model: AutoEncoder, params, x, output: str):
    return decoder_image(output, model.apply({"params": params}, x)[0])


def ae_encode(model: AutoEncoder, params, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Codes z ``[N, D]`` of images ``[N, H, W, C]``."""
    return apply_in_batches(_ae_code, model, params, x, batch_size=batch_size)


def ae_decode(model: AutoEncoder, params, z: np.ndarray, output: str = "sigmoid", batch_size: int = 1000) -> np.ndarray:
    """Decoded images ``[N, H, W, C]`` of codes ``[N, D]`` (not for ``upsampling="unpool"``: see the model)."""
    return apply_in_batches(_ae_decode, model, params, np.asarray(z, np.float32), batch_size=batch_size, output=output)


def ae_reconstruct(
    model: AutoEncoder, params, x: np.ndarray, output: str = "sigmoid", batch_size: int = 1000
) -> np.ndarray:
    """Reconstructions ``[N, H, W, C]`` of (possibly corrupted) inputs ``x``, all ways up included."""
    return apply_in_batches(_ae_reconstruct, model, params, x, batch_size=batch_size, output=output)


# --- the trained model (vae_jax.load_run) ---------------------------------------------------


class AutoEncoderModel(TrainedModel):
    """A deterministic autoencoder: no prior to sample from; ``encode`` gives the code ``[N, D]``."""

    def _sample(self, n, key, labels, temperature):
        self._no("sample", "has no prior over its codes to sample from (train a VAE for that)")

    def _reconstruct(self, x, labels):
        return ae_reconstruct(self.model, self.params, x, self.config.output)

    def _encode(self, x, labels):
        return ae_encode(self.model, self.params, x)

    def _decode(self, z, labels):
        if self.config.arch == "conv" and self.config.upsampling == "unpool":
            self._no("decode", "with --upsampling unpool needs the encoder's pooling indices; use reconstruct")
        return ae_decode(self.model, self.params, z, self.config.output)
