"""The learned prior over a VQ-VAE's code grids: config, training task, sampler and test NLL.

Stage 2 of a VQ-VAE (van den Oord et al. 2017): the codebook indices of the
training images, a grid ``[H', W']`` of integers in [0, K) per image, are the
data of an autoregressive :class:`~vae_jax.models.pixelcnn.PixelCNN`. It
trains through the shared driver like any other family::

    from vae_jax import runner
    from vae_jax.tasks import prior

    config = prior.PriorConfig(workdir="runs/vqvae/prior", epochs=20)
    dataset = prior.codes_dataset(train_codes, test_codes, source="VQ-VAE codes of mnist")
    model, task = prior.prior_task(config, grid_shape=(7, 7), num_codes=512)
    result = runner.train(config, task, dataset)      # test metrics: nll (nats), bits_per_dim
    codes = prior.sample_codes(model, result.params(0), jax.random.key(1), 100, (7, 7))  # int32 [100, 7, 7]
    nll = prior.code_nll(model, result.params(0), test_codes)                            # [N] nats

The per-example loss is the grid's negative log-likelihood in nats
(:func:`grid_nll`); bits per dimension is nll / (H'·W'·ln 2): a uniform prior scores log2 K.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import data as data_lib
from vae_jax import precision as precision_lib
from vae_jax.arrays import bare_params
from vae_jax.errors import field, positive_number, require
from vae_jax.models.pixelcnn import PixelCNN
from vae_jax.models.pixelcnn import init_params as init_pixelcnn_params
from vae_jax.protocol import Task, TrainConfig


@dataclasses.dataclass(frozen=True)
class PriorConfig(TrainConfig):
    """A gated PixelCNN prior over code grids (van den Oord et al. 2016, 2017).

    K and the grid shape come from the codes themselves (:func:`prior_task`); ``--dataset`` and
    ``--binarize`` do not apply (the data are the code grids of a trained VQ-VAE).
    """

    kind: ClassVar[str] = "vq_prior"

    workdir: str = field("runs/vq_prior", "output directory: config, metrics, checkpoints")
    batch_size: int = field(64, "training batch size (code grids)")
    channels: int = field(64, "channels of the PixelCNN's vertical and horizontal stacks")
    layers: int = field(5, "gated masked-convolution layers (mask A first, then B)")
    kernel_size: int = field(
        3,
        "odd kernel size k of the masked convolutions (k×k vertical, 1×k horizontal); "
        "L layers reach L·(k//2) rows up and columns left",
    )
    conditional: bool = field(False, "condition the prior on the class labels (sample one class at a time)")
    precision: str = precision_lib.config_field("bfloat16 network; the softmax cross-entropy in float32")

    def validate(self) -> None:
        super().validate()
        require(self.channels > 0, "channels", "a positive integer", self.channels)
        require(self.layers > 0, "layers", "a positive integer", self.layers)
        require(
            self.kernel_size > 0 and self.kernel_size % 2 == 1,
            "kernel_size",
            "an odd positive integer",
            self.kernel_size,
        )
        require(self.binarize == "none", "binarize", "none (the prior models integer codes)", self.binarize)


def build_prior(config: PriorConfig, num_codes: int, num_classes: int | None = None) -> PixelCNN:
    """The :class:`PixelCNN` ``config`` describes, over ``num_codes`` codes (and classes when conditional)."""
    return PixelCNN(
        num_codes=num_codes,
        features=config.channels,
        num_layers=config.layers,
        kernel_size=config.kernel_size,
        num_classes=num_classes if config.conditional else 0,
    )


def grid_nll(logits: jax.Array, codes: jax.Array) -> jax.Array:
    """Per-example NLL of code grids in nats: ``-sum_{i,j} log softmax(logits[:, i, j])[codes[:, i, j]]``.

    ``logits`` ``[B, H, W, K]``, int ``codes`` ``[B, H, W]`` in [0, K) -> ``[B]``, summed over the grid.
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, codes).sum(axis=(1, 2))


def code_bits_per_dim(nll_nats, grid_shape: Sequence[int]):
    """Bits per dimension ``nll / (H'·W'·ln 2)`` of per-grid NLLs in nats (any array shape)."""
    return nll_nats / (math.prod(grid_shape) * math.log(2.0))


def prior_task(
    config: PriorConfig, grid_shape: Sequence[int], num_codes: int, num_classes: int | None = None
) -> tuple[PixelCNN, Task]:
    """The PixelCNN over ``grid_shape = (H', W')`` grids of K = ``num_codes`` codes and its task for ``runner.train``.

    ``num_classes`` is required when ``config.conditional`` (the batches then carry labels ``y``).
    The task's batches are ``{"x": int32 [B, H', W', 1]}`` (plus ``"y": [B]``), as
    :func:`codes_dataset` holds them; its loss is the batch mean of :func:`grid_nll`, its
    per-example test metrics ``nll`` (nats per grid) and ``bits_per_dim`` (the headline).
    """
    grid_shape = tuple(int(s) for s in grid_shape)
    if len(grid_shape) != 2 or min(grid_shape) < 1:
        raise ValueError(f"grid_shape must be (H, W) with positive sizes, got {grid_shape!r}")
    if num_codes < 2:
        raise ValueError(f"num_codes must be at least 2, got {num_codes!r}")
    if config.conditional and not num_classes:
        raise ValueError("--conditional needs class labels: pass num_classes (and labels in the dataset)")
    model = build_prior(config, num_codes, num_classes)

    network = precision_lib.compute_in(model, config.precision)  # training only; evaluation in float32

    def grid_metrics(params, batch, net=model):
        codes = batch["x"][..., 0]  # [B, H', W']
        labels = batch["y"] if config.conditional else None
        nll = grid_nll(net.apply({"params": params}, codes, labels), codes)  # [B]; float32 logits
        return {"nll": nll, "bits_per_dim": code_bits_per_dim(nll, grid_shape)}

    def loss_fn(params, batch, key, step):
        del key, step  # the prior's loss is deterministic
        metrics = {name: jnp.mean(values) for name, values in grid_metrics(params, batch, network).items()}
        return metrics["nll"], {"loss": metrics["nll"], **metrics}

    def eval_fn(params, batch, key):
        del key
        return grid_metrics(params, batch)

    task = Task(
        init_params=lambda key: init_pixelcnn_params(model, key, grid_shape),
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        headline="bits_per_dim",
    )
    return model, task


def _as_code_grids(codes, name: str) -> np.ndarray:
    """int32 ``[N, H', W', 1]`` from integer codes ``[N, H', W']`` or ``[N, H', W', 1]``."""
    codes = np.asarray(codes)
    if codes.ndim == 4 and codes.shape[-1] == 1:
        codes = codes[..., 0]
    if codes.ndim != 3 or codes.shape[0] == 0:
        raise data_lib.DataError(f"{name} must be a non-empty [N, H, W] array of code indices, got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise data_lib.DataError(f"{name} must hold integer code indices, got dtype {codes.dtype}")
    if codes.min() < 0:
        raise data_lib.DataError(f"{name} must hold code indices >= 0, got {codes.min()}")
    return codes.astype(np.int32)[..., None]


def codes_dataset(train_codes, test_codes, source: str, train_labels=None, test_labels=None) -> data_lib.Dataset:
    """Code grids as a :class:`~vae_jax.data.Dataset` that ``runner.train`` can feed to :func:`prior_task`'s task.

    ``train_codes``, ``test_codes``: integer code indices ``[N, H', W']`` (or ``[N, H', W', 1]``), e.g.
    a VQ-VAE's nearest-code indices of the train and test images; ``source`` is written to
    ``summary.json``; optional int ``[N]`` labels serve a conditional prior. The Dataset's
    ``x_train``/``x_test`` are int32 ``[N, H', W', 1]``, its ``y_*`` int32 or None. Raises ``DataError``
    for codes that are not integer grids of one shape, or labels of another length.
    """
    x_train = _as_code_grids(train_codes, "train_codes")
    x_test = _as_code_grids(test_codes, "test_codes")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise data_lib.DataError(
            f"train_codes and test_codes must share one grid shape, got {x_train.shape[1:3]} and {x_test.shape[1:3]}"
        )
    if (train_labels is None) != (test_labels is None):
        raise data_lib.DataError("train_labels and test_labels must be given together")
    labels = []
    for name, y, x in (("train_labels", train_labels, x_train), ("test_labels", test_labels, x_test)):
        if y is not None:
            y = np.asarray(y)
            if y.shape != (x.shape[0],):
                raise data_lib.DataError(f"{name} must be [N] with N = {x.shape[0]}, got shape {y.shape}")
            y = y.astype(np.int32)
        labels.append(y)
    return data_lib.Dataset(x_train, labels[0], x_test, labels[1], source=source)


# --- queries (host arrays out) --------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model", "n", "grid_shape"))
def _sample_codes(model: PixelCNN, params, key, temperature, labels, n: int, grid_shape: tuple[int, int]):
    height, width = grid_shape
    num_positions = height * width

    def draw_position(position, codes):  # codes: [n, H·W], positions < `position` already drawn
        logits = model.apply({"params": params}, codes.reshape(n, height, width), labels)  # [n, H, W, K]
        logits = logits.reshape(n, num_positions, -1)[:, position]  # [n, K]
        # one key per position: fold_in keeps the draw at each position independent of the grid size
        drawn = jax.random.categorical(jax.random.fold_in(key, position), logits / temperature)
        return codes.at[:, position].set(drawn.astype(jnp.int32))

    codes = jax.lax.fori_loop(0, num_positions, draw_position, jnp.zeros((n, num_positions), jnp.int32))
    return codes.reshape(n, height, width)


def sample_codes(
    model: PixelCNN, params, key: jax.Array, n: int, grid_shape: Sequence[int], temperature: float = 1.0, labels=None
) -> np.ndarray:
    """Draws ``n`` code grids from the prior, one position at a time in raster order.

    c_1 ~ p(c_1), c_2 ~ p(c_2 | c_1), ... : for each of the H'·W' positions
    the network is re-run on the partly drawn grids and the position's code is
    drawn from softmax(logits / temperature). The whole loop is one compiled
    ``lax.fori_loop`` (compiled once per model, n and grid shape); the draw at
    position p uses ``fold_in(key, p)``, so a key gives the same grids every time.
    ``temperature`` > 0: 1 samples the model, < 1 sharpens it towards its modes. ``labels``:
    int ``[n]`` classes, required for a conditional prior. Returns int32 ``[n, H', W']`` codes in [0, K).
    """
    grid_shape = tuple(int(s) for s in grid_shape)
    temperature_value = positive_number(temperature, "temperature")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    if model.num_classes and (labels is None or np.shape(labels) != (n,)):
        raise ValueError(f"this prior is class-conditional: pass labels of shape ({n},)")
    labels = jnp.asarray(labels, jnp.int32) if model.num_classes else None
    codes = _sample_codes(
        model, bare_params(params), key, jnp.float32(temperature_value), labels, n=n, grid_shape=grid_shape
    )
    return np.asarray(codes)


@functools.partial(jax.jit, static_argnames=("model",))
def _batch_nll(model: PixelCNN, params, codes, labels):
    return grid_nll(model.apply({"params": params}, codes, labels), codes)


def code_nll(model: PixelCNN, params, codes, labels=None, batch_size: int = 500) -> np.ndarray:
    """Per-grid negative log-likelihood ``-log p(c)`` in nats ``[N]`` of integer ``codes``
    ``[N, H', W']`` (or ``[N, H', W', 1]``) in [0, K); ``labels`` int ``[N]`` for a conditional prior.

    :func:`code_bits_per_dim` turns it into bits per dimension.
    """
    codes = _as_code_grids(codes, "codes")[..., 0]
    if codes.max() >= model.num_codes:
        raise ValueError(f"codes must lie in [0, {model.num_codes}), got a code {codes.max()}")
    if model.num_classes and labels is None:
        raise ValueError("this prior is class-conditional: pass labels [N]")
    out = []
    for start in range(0, codes.shape[0], batch_size):
        batch_labels = None if not model.num_classes else jnp.asarray(labels[start : start + batch_size], jnp.int32)
        batch = jnp.asarray(codes[start : start + batch_size])
        out.append(np.asarray(_batch_nll(model, bare_params(params), batch, batch_labels)))
    return np.concatenate(out)
