"""vae_jax: the autoencoder family as pure JAX functions and flax.linen models.

What you import for your own code::

    from vae_jax import VAE, init_variables, losses
    from vae_jax.data import load_dataset

``losses`` (pure per-example losses), ``ops`` (building blocks), ``models``
(linen models; ``VAE``, ``AutoEncoder`` and ``init_variables``/``init_params``
re-exported here), ``data`` (``load_dataset``). Importing ``vae_jax`` loads
JAX, optax and flax only: TensorFlow is imported only when a TFDS dataset is
read, and the training driver (``vae_jax.runner``, Orbax) only when imported.
"""

from vae_jax import data, losses, models, ops
from vae_jax.models import VAE, AutoEncoder, init_params, init_variables

__version__ = "0.1.0"

__all__ = ["data", "losses", "models", "ops", "VAE", "AutoEncoder", "init_params", "init_variables", "__version__"]
