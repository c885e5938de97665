"""flax.linen models, one family per module; every family's model class is re-exported here.

``init_variables`` / ``init_params`` initialise every Gaussian VAE (``VAE``, ``ConvVAE``, ``CVAE``,
``HVAE``); ``bare_params`` unwraps flax's ``{"params": ...}`` variables into the params tree the queries take.
"""

from vae_jax.arrays import bare_params
from vae_jax.models.autoencoder import AutoEncoder
from vae_jax.models.conv_vae import ConvVAE
from vae_jax.models.cvae import CVAE
from vae_jax.models.hvae import HVAE
from vae_jax.models.pixelcnn import PixelCNN
from vae_jax.models.vae import VAE, GaussianVAE, MLPDecoder, MLPEncoder, init_params, init_variables
from vae_jax.models.vqvae import VQVAE

__all__ = [
    "GaussianVAE",
    "VAE",
    "MLPEncoder",
    "MLPDecoder",
    "init_params",
    "init_variables",
    "AutoEncoder",
    "ConvVAE",
    "CVAE",
    "HVAE",
    "VQVAE",
    "PixelCNN",
    "bare_params",
]
