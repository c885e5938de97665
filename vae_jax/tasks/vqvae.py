"""The VQ-VAE's config and training task, codebook usage over a dataset, and the queries its figures need.

Loss per example (van den Oord et al. 2017), averaged over the batch::

    recon(x) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2

``recon`` is the decoder's negative log-likelihood summed over pixels:
``bernoulli`` (binary cross-entropy with the gray values as Bernoulli means,
nats) or ``gaussian`` (N(sigmoid(logits), exp(decoder_logvar)) per pixel).
The two VQ terms are summed over the code grid. Every term is a per-example
sum, so ``beta`` means the same at any batch size.

Codebook options: ``--codebook grad`` trains the codebook by the codebook term
above; with ``--codebook ema`` (default) the loss drops that term and
``Task.update_fn`` moves the used codes to the EMA cluster means after each
optimizer step (:func:`vae_jax.quantize.ema_update`). ``--kmeans-init on``
starts the codebook at k-means centres of the fresh encoder's outputs on a
random batch of training images, in ``init_params`` (under the vmapped,
scan-fused epoch a step-0 branch of the update would run at every step).
``--dead-code-steps N`` restarts codes unused for N steps
(:func:`vae_jax.quantize.restart_dead_codes`). The defaults were the best of
the eight combinations measured on the embedded digits
(``docs/experiments/vqvae_codebook.md``); the paper's gradient codebook is
``--codebook grad --dead-code-steps 0``.

The non-gradient state (EMA averages, steps since each code was used) is
``TrainState.model_state``: checkpointed with the run, changed only by
``update_fn`` in training steps, never by evaluation.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import compiling, losses, objectives, quantize
from vae_jax import precision as precision_lib
from vae_jax.arrays import apply_in_batches
from vae_jax.errors import ConfigError, field, require, require_list
from vae_jax.models.vqvae import VQVAE
from vae_jax.models.vqvae import init_params as init_vqvae_params
from vae_jax.protocol import Task, TrainConfig
from vae_jax.tasks.prior import sample_codes
from vae_jax.trained_model import TrainedModel

CODEBOOK_MODES = ("grad", "ema")
ON_OFF = ("off", "on")
# The preset's values of the flags left at 0 / empty. "color32": 32x32 colour images,
# an 8x8 grid and K = 512 as in the paper's CIFAR-10 model (beta = 0.25 for both).
PRESETS = {
    "mnist": {"codebook_size": 64, "code_dim": 16, "channels": (16, 32), "res_blocks": 1},
    "color32": {"codebook_size": 512, "code_dim": 64, "channels": (128, 256), "res_blocks": 2},
}
KMEANS_BATCH = 256  # images whose encoder outputs the k-means init clusters


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def _require_words(name: str, text: str, allowed: tuple[str, ...], expected: str) -> None:
    """A one-line error naming ``--name`` unless ``text`` is a non-empty comma-separated list of ``allowed``."""
    words = _words(text)
    require(bool(words) and all(w in allowed for w in words), name, expected, text)


@dataclasses.dataclass(frozen=True)
class VQVAEConfig(TrainConfig):
    """The conv VQ-VAE; ``--codebook``, ``--kmeans-init`` and ``--dead-code-steps`` take lists to compare options.

    ``python -m experiments.vqvae --epochs 10 --workdir runs/vqvae``
    """

    kind: ClassVar[str] = "vqvae"

    workdir: str = field("runs/vqvae", "output directory: config, metrics, checkpoints, figures")
    epochs: int = field(10, "number of epochs to train")
    checkpoint_every: int = field(1, "save a checkpoint every N epochs (codebook usage by epoch is read from them)")
    keep_checkpoints: int = field(100, "how many of the newest checkpoints to keep")
    preset: str = field(
        "mnist",
        "model size: mnist (7x7 grid, K=64, D=16, channels 16,32) or color32 (8x8 grid, K=512, D=64, channels 128,256)",
        choices=tuple(PRESETS),
    )
    codebook_size: int = field(0, "number of codes K (0: the preset's)")
    code_dim: int = field(0, "code dimension D (0: the preset's)")
    channels: tuple[int, ...] = field((), "channels after the two down-convolutions, like 32,64 (empty: the preset's)")
    res_blocks: int = field(-1, "residual blocks in encoder and decoder (-1: the preset's)")
    commitment: float = field(0.25, "commitment weight beta")
    codebook: str = field("ema", "codebook learning: grad or ema (a list like grad,ema compares both)")
    ema_decay: float = field(0.99, "EMA decay of the codebook averages (--codebook ema)")
    ema_rule: str = field(
        "keep",
        "EMA step for codes unused in a step: keep (keep their vector) or sonnet "
        "(rewrite every code from its averages, as Sonnet/Haiku's VectorQuantizerEMA)",
        choices=quantize.EMA_RULES,
    )
    kmeans_init: str = field("off", "k-means initialisation of the codebook: off or on (off,on compares both)")
    kmeans_iterations: int = field(10, "Lloyd iterations of the k-means initialisation")
    dead_code_steps: tuple[int, ...] = field((100,), "restart codes unused for N steps, 0: never (a list compares)")
    cosine: bool = field(False, "l2-normalised vectors and codes (nearest by cosine similarity)")
    likelihood: str = field("bernoulli", "decoder likelihood p(x|z_q)", choices=objectives.LIKELIHOODS)
    decoder_logvar: float = field(0.0, "log variance of the Gaussian decoder (gaussian likelihood only)")
    precision: str = precision_lib.config_field(
        "bfloat16 encoder and decoder, and the PixelCNN prior of "
        "experiments.vqvae; the codebook search and VQ terms in float32"
    )

    def validate(self) -> None:
        super().validate()
        require(
            self.codebook_size >= 0, "codebook_size", "a positive integer (or 0 for the preset's)", self.codebook_size
        )
        require(self.code_dim >= 0, "code_dim", "a positive integer (or 0 for the preset's)", self.code_dim)
        require(
            len(self.channels) in (0, 2) and all(c > 0 for c in self.channels),
            "channels",
            "two positive channel counts like 32,64",
            ",".join(map(str, self.channels)),
        )
        require(self.res_blocks >= -1, "res_blocks", "a non-negative integer (or -1 for the preset's)", self.res_blocks)
        require(
            math.isfinite(self.commitment) and self.commitment >= 0,
            "commitment",
            "a non-negative number",
            self.commitment,
        )
        _require_words("codebook", self.codebook, CODEBOOK_MODES, "grad, ema or a list of them like grad,ema")
        require(0.0 <= self.ema_decay < 1.0, "ema_decay", "a number in [0, 1)", self.ema_decay)
        require(self.ema_rule in quantize.EMA_RULES, "ema_rule", "keep or sonnet", self.ema_rule)
        _require_words("kmeans_init", self.kmeans_init, ON_OFF, "on, off or a list like off,on")
        require(self.kmeans_iterations >= 0, "kmeans_iterations", "a non-negative integer", self.kmeans_iterations)
        require_list(
            "dead_code_steps", self.dead_code_steps, lambda n: n >= 0, "non-negative step counts like 0 or 0,100"
        )
        require(math.isfinite(self.decoder_logvar), "decoder_logvar", "a finite number", self.decoder_logvar)

    def validate_for(self, image_shape) -> None:
        h, w = image_shape[:2]
        if h % 4 or w % 4:
            raise ConfigError(
                f"--dataset: the VQ-VAE needs image sides divisible by 4 (two stride-2 down-convolutions), got {h}x{w}"
            )

    @property
    def num_codes(self) -> int:
        return self.codebook_size or PRESETS[self.preset]["codebook_size"]

    @property
    def dim(self) -> int:
        return self.code_dim or PRESETS[self.preset]["code_dim"]

    @property
    def conv_channels(self) -> tuple[int, int]:
        return tuple(self.channels) or PRESETS[self.preset]["channels"]

    @property
    def num_res_blocks(self) -> int:
        return self.res_blocks if self.res_blocks >= 0 else PRESETS[self.preset]["res_blocks"]

    def is_single(self) -> bool:
        """True when every compared option holds one value (a config that trains one model)."""
        return len(_words(self.codebook)) == 1 and len(_words(self.kmeans_init)) == 1 and len(self.dead_code_steps) == 1

    def variants(self) -> list[tuple[str, VQVAEConfig]]:
        """``[(name, config)]``, one single-option config per combination of the listed options.

        With one combination it is ``[("", self)]``; with several each gets the
        sub-workdir ``workdir/NAME`` with NAME like ``ema_kmeans-on_dead-100``.
        """
        combos = [
            (m, i, n) for m in _words(self.codebook) for i in _words(self.kmeans_init) for n in self.dead_code_steps
        ]
        if len(combos) == 1:
            return [("", self)]
        out = []
        for mode, init, dead in combos:
            name = f"{mode}_kmeans-{init}_dead-{dead}"
            single = {"codebook": mode, "kmeans_init": init, "dead_code_steps": (dead,)}
            out.append((name, dataclasses.replace(self, **single, workdir=os.path.join(self.workdir, name))))
        return out


def build_vqvae(config: VQVAEConfig, image_shape) -> VQVAE:
    return VQVAE(
        num_codes=config.num_codes,
        code_dim=config.dim,
        channels=config.conv_channels,
        num_res_blocks=config.num_res_blocks,
        image_shape=tuple(image_shape),
        cosine=config.cosine,
    )


def vqvae_terms(model: VQVAE, params, x: jax.Array, likelihood: str, decoder_logvar: float, precision: str = "f32"):
    """Per-example terms ``[B]`` (``recon``, ``codebook_loss``, ``commitment``) and the :class:`Quantized` grid.

    The encoder and the decoder compute in ``precision`` (:func:`vae_jax.precision.compute_in`); the
    codebook search and the VQ terms in float32, on the float32 codebook.
    """
    network = precision_lib.compute_in(model, precision)
    z_e = network.apply({"params": params}, x, method=model.encode)  # float32 out
    quantized = model.apply({"params": params}, z_e, method=model.quantize)
    logits = network.apply({"params": params}, quantized.z_q, method=model.decode)
    recon = objectives.reconstruction_nll(likelihood, logits, x, decoder_logvar)
    terms = {
        "recon": recon,
        "codebook_loss": quantize.vq_codebook_loss(quantized),
        "commitment": quantize.vq_commitment_loss(quantized),
    }
    return terms, logits, quantized


def make_vqvae_update(config: VQVAEConfig, num_codes: int):
    """``update_fn(params, model_state, aux, step, key) -> (params, model_state, metrics)`` of the codebook.

    ``aux`` holds the step's ``z_e`` and ``indices``. Metrics: ``batch_codes_used`` and
    ``batch_perplexity`` (of this batch only; the whole-set numbers come from :func:`code_usage`)
    and, with dead-code restarts, ``codes_restarted``.
    """
    ema = config.codebook == "ema"
    dead_after = config.dead_code_steps[0]

    def update_fn(params, model_state, aux, step, key):
        del step
        codebook = params["codebook"]
        counts = quantize.code_counts(aux["indices"], num_codes)
        metrics = {
            "batch_codes_used": quantize.codes_used(counts).astype(jnp.float32),
            "batch_perplexity": quantize.perplexity(counts),
        }
        model_state = dict(model_state)
        if ema:
            codebook, ema_state = quantize.ema_update(
                quantize.EMAState(**model_state["ema"]),
                codebook,
                aux["z_e"],
                aux["indices"],
                config.ema_decay,
                rule=config.ema_rule,
            )
        steps_unused = quantize.update_steps_unused(model_state["steps_unused"], counts)
        if dead_after > 0:
            codebook, steps_unused, dead = quantize.restart_dead_codes(
                key, codebook, steps_unused, aux["z_e"], dead_after
            )
            if ema:
                ema_state = quantize.ema_reset_codes(ema_state, codebook, dead, config.ema_decay)
            metrics["codes_restarted"] = jnp.sum(dead).astype(jnp.float32)
        if ema:
            model_state["ema"] = ema_state._asdict()
        model_state["steps_unused"] = steps_unused
        return {**params, "codebook": codebook}, model_state, metrics

    return update_fn


def vqvae_task(config: VQVAEConfig, image_shape, init_images: np.ndarray | None = None) -> tuple[VQVAE, Task]:
    """The model and the :class:`Task` of one option combination (``config.is_single()``).

    ``init_images`` (training images ``[N, H, W, C]``) are needed for
    ``--kmeans-init on``: the k-means batch is drawn from them.
    """
    if not config.is_single():
        raise ValueError("vqvae_task trains one option combination; expand lists with config.variants()")
    config.validate_for(image_shape)
    model = build_vqvae(config, image_shape)
    num_codes, dim = config.num_codes, config.dim
    use_kmeans = config.kmeans_init == "on"
    grad_codebook = config.codebook == "grad"
    if use_kmeans and init_images is None:
        raise ValueError("--kmeans-init on needs init_images (a batch of training images)")
    kmeans_images = None if not use_kmeans else jnp.asarray(init_images)
    dynamic_binarize = config.binarize == "dynamic"

    def init_params(key):
        net_key, batch_key, kmeans_key = jax.random.split(key, 3)
        params = init_vqvae_params(model, net_key)
        if not use_kmeans:
            return params
        n = kmeans_images.shape[0]
        idx = jax.random.choice(batch_key, n, (min(n, KMEANS_BATCH),), replace=False)
        z_e = model.apply({"params": params}, kmeans_images[idx], method=model.encode)
        centres = quantize.kmeans(kmeans_key, z_e, num_codes, config.kmeans_iterations, config.cosine)
        return {**params, "codebook": centres}

    def init_model_state(params):
        del params
        state = {"steps_unused": jnp.zeros((num_codes,), jnp.int32)}
        if not grad_codebook:
            state["ema"] = quantize.ema_init(num_codes, dim)._asdict()
        return state

    def objective(terms):  # [B]
        per_example = terms["recon"] + config.commitment * terms["commitment"]
        return per_example + terms["codebook_loss"] if grad_codebook else per_example

    def loss_fn(params, batch, key, step):
        del step
        x, _ = objectives.binarize_batch(key, batch["x"], dynamic_binarize)
        terms, _, quantized = vqvae_terms(model, params, x, config.likelihood, config.decoder_logvar, config.precision)
        loss = jnp.mean(objective(terms))
        metrics = {"loss": loss, "recon": jnp.mean(terms["recon"]), "commitment": jnp.mean(terms["commitment"])}
        aux = {"z_e": jax.lax.stop_gradient(quantized.z_e), "indices": quantized.indices}
        return loss, (metrics, aux)

    def eval_fn(params, batch, key):
        del key
        x = batch["x"]
        terms, logits, _ = vqvae_terms(model, params, x, config.likelihood, config.decoder_logvar)
        mse = losses.mean_squared_error(objectives.decoder_mean(logits), x)
        # ||z_e - e||^2: the codebook and commitment terms have this same value (they differ in gradients only).
        return {
            "loss": objective(terms),
            "recon": terms["recon"],
            "quantization_error": terms["commitment"],
            "mse": mse,
            "psnr": losses.psnr_from_mse(mse),
        }

    task = Task(
        init_params=init_params,
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        headline="mse",
        update_fn=make_vqvae_update(config, num_codes),
        init_model_state=init_model_state,
        not_trained=codebook_not_trained if config.codebook == "ema" else None,
    )
    return model, task


def codebook_not_trained(params) -> dict:
    """With ``--codebook ema`` the codebook is set by ``update_fn`` alone: the optimizer leaves it out."""
    return {name: name == "codebook" for name in params}


# --- codebook usage over a dataset, and queries for figures (host arrays out) --------


def _code_indices(model: VQVAE, params, x):
    z_e = model.apply({"params": params}, x, method=model.encode)
    return model.apply({"params": params}, z_e, method=model.quantize).indices


def _decode_indices(model: VQVAE, params, indices):
    return objectives.decoder_mean(model.apply({"params": params}, indices, method=model.decode_indices))


def _reconstruct(model: VQVAE, params, x):
    return objectives.decoder_mean(model.apply({"params": params}, x)[0])


def encode_indices(model: VQVAE, params, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Code-index grids ``[N, H/4, W/4]`` (int32) of images ``[N, H, W, C]``."""
    return apply_in_batches(_code_indices, model, params, x, batch_size=batch_size)


def code_usage(model: VQVAE, params, x: np.ndarray, batch_size: int = 1000) -> dict:
    """Codebook usage over all of ``x``: ``counts`` ``[K]``, ``codes_used``, ``perplexity`` (from the summed counts)."""
    return usage_of_indices(encode_indices(model, params, x, batch_size), model.num_codes)


def usage_of_indices(indices: np.ndarray, num_codes: int) -> dict:
    """:func:`code_usage` of code-index grids already encoded (:func:`encode_indices`)."""
    counts = np.bincount(np.asarray(indices).reshape(-1), minlength=num_codes).astype(np.float64)
    return {
        "counts": counts,
        "codes_used": int(np.sum(counts > 0)),
        "perplexity": float(quantize.perplexity(jnp.asarray(counts))),
    }


def decode_indices(model: VQVAE, params, indices: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Images ``[N, H, W, C]`` in [0, 1] decoded from code-index grids ``[N, H/4, W/4]``."""
    return apply_in_batches(_decode_indices, model, params, np.asarray(indices, np.int32), batch_size=batch_size)


def reconstruct(model: VQVAE, params, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Reconstructions ``[N, H, W, C]`` in [0, 1]: decode the quantized grid of ``x``."""
    return apply_in_batches(_reconstruct, model, params, x, batch_size=batch_size)


def uniform_code_grids(key: jax.Array, n: int, grid_shape, num_codes: int) -> np.ndarray:
    """``n`` code grids with every cell uniform over the K codes (the VQ-VAE's training-time prior)."""
    return np.asarray(_uniform_codes(key, (n, *grid_shape), num_codes), np.int32)


@compiling.jit_run_once(static_argnums=(1, 2))
def _uniform_codes(key, shape: tuple, num_codes: int):
    return jax.random.randint(key, shape, 0, num_codes)


# --- the trained model (vae_jax.load_run) ---------------------------------------------------


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
            codes = uniform_code_grids(key, n, grid, self.model.num_codes)
        else:
            _, prior_model, prior_params = self.prior
            codes = sample_codes(prior_model, prior_params, key, n, grid, temperature)
        return decode_indices(self.model, self.params, codes)

    def _reconstruct(self, x, labels):
        return reconstruct(self.model, self.params, x)

    def _encode(self, x, labels):
        return encode_indices(self.model, self.params, x)

    def _latents(self, z) -> np.ndarray:
        z, (h, w), k = np.asarray(z), self.model.grid_shape, self.model.num_codes
        wanted = f"z must be code-index grids [N, {h}, {w}] of integers in [0, {k}) for this model"
        if z.ndim != 3 or z.shape[1:] != (h, w) or len(z) < 1 or not np.issubdtype(z.dtype, np.integer):
            raise ConfigError(f"{wanted}, got shape {list(z.shape)} ({z.dtype})")
        if z.min() < 0 or z.max() >= k:
            raise ConfigError(f"{wanted}, got codes from {int(z.min())} to {int(z.max())}")
        return z.astype(np.int32)

    def _decode(self, z, labels):
        return decode_indices(self.model, self.params, z)
