"""Params or variables: what the functions that take a model's ``params`` accept (:func:`bare_params`)."""

from vae_jax.arrays import bare_params

__all__ = ["bare_params"]
