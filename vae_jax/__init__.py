"""vae_jax: the autoencoder family as pure JAX functions and flax.linen models."""

__version__ = "0.1.0"
