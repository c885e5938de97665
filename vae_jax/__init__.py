"""vae_jax: the autoencoder family as pure JAX functions and flax.linen models.

What you import for your own code::

    from vae_jax import VAE, init_variables, losses
    from vae_jax.data import load_dataset
    from vae_jax import load_run, export_run, TrainedModel   # use what a training run left

``losses`` (pure per-example losses), ``ops`` (building blocks), ``models``
(linen models of every family; ``VAE``, ``AutoEncoder`` and
``init_variables``/``init_params`` re-exported here), ``data``
(``load_dataset``), and :func:`load_run` / :func:`export_run` /
:class:`TrainedModel` (:mod:`vae_jax.trained` and :mod:`vae_jax.trained_model`: a trained run of any
family as one object). Importing ``vae_jax`` loads JAX, optax and flax only: TensorFlow
is imported only when a TFDS dataset is read, and the training driver
(``vae_jax.runner``, Orbax) only when imported or when ``load_run`` is first used.
"""

from vae_jax import data, losses, models, ops
from vae_jax.models import VAE, AutoEncoder, init_params, init_variables

__version__ = "0.1.0"

_TRAINED = ("load_run", "export_run", "TrainedModel")

__all__ = [
    "data",
    "losses",
    "models",
    "ops",
    "VAE",
    "AutoEncoder",
    "init_params",
    "init_variables",
    *_TRAINED,
    "__version__",
]


def __getattr__(name: str):
    # vae_jax.trained imports the training driver (Orbax): only when load_run or export_run is first used.
    if name == "TrainedModel":
        from vae_jax.trained_model import TrainedModel

        return TrainedModel
    if name in _TRAINED:
        from vae_jax import trained

        return getattr(trained, name)
    raise AttributeError(f"module 'vae_jax' has no attribute {name!r}")
