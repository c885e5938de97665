"""Configs -> models and training tasks, one module per model family.

``vae_jax.tasks.vae`` (the MLP VAE) and ``vae_jax.tasks.autoencoder`` (plain,
denoising, masked and contractive autoencoders); each family's module holds
its config dataclass, its ``*_task(config, image_shape) -> (model, Task)`` and
the host-side queries its figures need. The names below are re-exported for
convenience.
"""

from vae_jax.tasks.autoencoder import (
    AE_HEADLINE,
    AE_LOSSES,
    AE_OUTPUTS,
    AE_VARIANTS,
    MASKED_LOSS_ON,
    AEConfig,
    ae_decode,
    ae_encode,
    ae_reconstruct,
    ae_reconstruction_loss,
    ae_task,
    build_autoencoder,
    decoder_image,
    make_ae_terms,
)
from vae_jax.tasks.common import apply_in_batches
from vae_jax.tasks.vae import (
    VAEConfig,
    build_vae,
    decode_means,
    encode_means,
    interpolate,
    reconstruct,
    sample_prior,
    vae_task,
)
