"""The convolutional VAE's config and training task (``--preset faces128``: the lecture's face model).

The figure queries of the MLP VAE (:mod:`vae_jax.tasks.vae`) work unchanged on
:class:`~vae_jax.models.conv_vae.ConvVAE`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from vae_jax.errors import ConfigError, field, flag, require, require_list
from vae_jax.models.conv_vae import FACES128, ConvVAE, bottleneck_shape
from vae_jax.models.vae import init_params
from vae_jax.protocol import Task
from vae_jax.tasks.vae import VAEObjectiveConfig

PRESETS = ("none", "faces128")

# What --preset faces128 sets: the lecture's loss is a Gaussian decoder with c = 1/2 (see ConvVAEConfig).
FACES128_FLAGS = {
    "image_size": FACES128["image_shape"][0],  # a folder of other sizes is resized and centre-cropped to 128x128
    "latent_dim": FACES128["latent_dim"],
    "channels": FACES128["channels"],
    "hidden": FACES128["hidden"],
    "likelihood": "gaussian",
    "decoder_logvar": math.log(0.5),
}


@dataclasses.dataclass(frozen=True)
class ConvVAEConfig(VAEObjectiveConfig):
    """A convolutional VAE; the defaults suit 28x28 digits.

    ``--preset faces128`` is the lecture's 128x128x3 face model
    (:data:`~vae_jax.models.conv_vae.FACES128`) trained on summed squared error + KL, i.e. the
    Gaussian likelihood with c = 1/2, which differs from the lecture's MSE-sum + KLD by the constant
    (D/2) log(pi), D = 128*128*3. Images of another size are resized (shorter side to 128) and
    centre-cropped. Grayscale images are refused rather than repeated into RGB: a grayscale set is
    more often the wrong ``--dataset`` (the default ``mnist``) than a wish for gray faces
    (``--preset none`` takes any channel count). The lecture notebook's KLD is a ``torch.mean``
    (the KL divided by batch x 64), not the ELBO's; here the KL is summed over the 64 dimensions.
    Run it with ``--dataset folder:PATH`` of face images:

        python -m experiments.conv_vae --preset faces128 --dataset folder:data/faces --batch-size 16 --epochs 400
    """

    kind: ClassVar[str] = "conv_vae"

    preset: str = field(
        "none",
        "faces128: the lecture's 128x128x3 face model on colour images (sets --image-size "
        "128, --latent-dim 64, --channels 32,32,64,64,128,256, --hidden 0, --likelihood gaussian, "
        "--decoder-logvar log(1/2))",
        choices=PRESETS,
    )
    latent_dim: int = field(16, "latent dimensions")
    channels: tuple[int, ...] = field(
        (16, 32), "channels of the stride-2 encoder convolutions (the decoder mirrors them); each halves the image"
    )
    hidden: int = field(128, "width of a Dense layer between the flattened features and the latent heads (0: none)")
    kernel_size: int = field(4, "convolution kernel size")
    workdir: str = field("runs/conv_vae", "output directory: config, metrics, checkpoints, figures")
    # what experiments.conv_vae measures besides training
    train_eval_examples: int = field(
        500,
        "training images evaluated each epoch, logged as train_eval_* beside "
        "test_* (the train/test gap per epoch; 0: off)",
    )
    mixture_components: int = field(10, "components of the Gaussian mixture fitted to the aggregate posterior")
    tsne_points: int = field(1000, "test points in the t-SNE figure")

    def validate(self) -> None:
        super().validate()
        require(
            self.train_eval_examples >= 0, "train_eval_examples", "a non-negative integer", self.train_eval_examples
        )
        require(self.mixture_components > 0, "mixture_components", "a positive integer", self.mixture_components)
        require(self.tsne_points >= 10, "tsne_points", "at least 10", self.tsne_points)
        require(self.latent_dim > 0, "latent_dim", "a positive integer", self.latent_dim)
        require_list("channels", self.channels, lambda c: c > 0, "comma-separated positive channel counts like 16,32")
        require(self.hidden >= 0, "hidden", "a non-negative width (0: no hidden layer)", self.hidden)
        require(self.kernel_size >= 2, "kernel_size", "an integer >= 2", self.kernel_size)
        if self.preset == "faces128":
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            side = FACES128_FLAGS["image_size"]
            if self.image_size not in (0, side):
                raise ConfigError(
                    f"--image-size {self.image_size} contradicts --preset faces128, which trains on "
                    f"{side}x{side} images: leave --image-size out (the preset resizes and centre-crops "
                    f"the images to {side}x{side}), or use --preset none"
                )
            for name, value in FACES128_FLAGS.items():
                mine = getattr(self, name)
                if mine != defaults[name] and mine != value:
                    raise ConfigError(
                        f"{flag(name)} is set by --preset faces128 (to {value!r}); leave it out, "
                        f"or use --preset none, got {mine!r}"
                    )

    def resolved(self) -> ConvVAEConfig:
        """The config with its preset's settings filled in (itself when ``--preset none``)."""
        if self.preset == "faces128":
            return dataclasses.replace(self, **FACES128_FLAGS)
        return self


def build_conv_vae(config: ConvVAEConfig, image_shape) -> ConvVAE:
    """The model ``config`` describes, for images of ``image_shape``; a one-line error if they do not fit."""
    config = config.resolved()
    image_shape = tuple(int(d) for d in image_shape)
    if config.preset == "faces128" and image_shape != FACES128["image_shape"]:
        got = "x".join(map(str, image_shape))
        if image_shape[:2] == FACES128["image_shape"][:2] and image_shape[2] == 1:
            raise ConfigError(
                f"--preset faces128 trains on colour images; --dataset {config.dataset} holds grayscale "
                f"ones ({got}): use a folder of colour photos, or --preset none for grayscale images"
            )
        raise ConfigError(
            f"--preset faces128 needs 128x128x3 images (e.g. --dataset folder:PATH of face images), got {got}"
        )
    h, w, _ = bottleneck_shape(image_shape, config.channels)
    if h < 1 or w < 1 or min(image_shape[:2]) < 2 ** len(config.channels) // 2:
        raise ConfigError(
            f"--channels {','.join(map(str, config.channels))}: {len(config.channels)} halvings do "
            f"not fit {image_shape[0]}x{image_shape[1]} images; use fewer convolutions"
        )
    return ConvVAE(
        image_shape=image_shape,
        latent_dim=config.latent_dim,
        channels=tuple(config.channels),
        hidden=config.hidden,
        kernel_size=config.kernel_size,
        likelihood=config.likelihood,
    )


def conv_vae_task(config: ConvVAEConfig, image_shape) -> tuple[ConvVAE, Task]:
    model = build_conv_vae(config, image_shape)
    return model, config.resolved().elbo_task(model, init_params)
