"""Configs -> models and training tasks, one module per model family.

Each family's module (``vae_jax.tasks.vae``, ``.autoencoder``, ``.conv_vae``, ``.cvae``, ``.hvae``,
``.vqvae``, ``.prior``) holds its config dataclass, its ``*_task(config, image_shape) -> (model, Task)``
and the host-side queries its figures need. The MLP VAE's and the autoencoders' names are re-exported here.
"""

from vae_jax.tasks.autoencoder import (
    AE_HEADLINE,
    AE_VARIANTS,
    AEConfig,
    ae_decode,
    ae_encode,
    ae_reconstruct,
    ae_task,
)
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
