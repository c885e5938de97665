"""flax.linen models, one family per module; the names users reach for are re-exported here.

``VAE`` (the MLP VAE of :mod:`vae_jax.models.vae`) with ``init_variables`` /
``init_params``; ``AutoEncoder`` (MLP or conv, :mod:`vae_jax.models.autoencoder`).
"""

from vae_jax.models.autoencoder import AutoEncoder
from vae_jax.models.vae import VAE, MLPDecoder, MLPEncoder, init_params, init_variables

__all__ = ["VAE", "MLPEncoder", "MLPDecoder", "init_params", "init_variables", "AutoEncoder"]
