"""Params or variables: what the functions that take a model's ``params`` accept."""

from __future__ import annotations

from collections.abc import Mapping


def bare_params(tree):
    """The bare params tree of ``tree``.

    ``model.init`` returns flax's variables ``{"params": ...}`` and
    ``model.apply`` wants them so; the queries of :mod:`vae_jax.tasks`, the
    evaluation and the samplers take the bare tree inside. Either is accepted:
    a mapping whose only key is ``"params"`` is unwrapped, anything else is
    returned as it is.
    """
    if isinstance(tree, Mapping) and set(tree.keys()) == {"params"} and isinstance(tree["params"], Mapping):
        return tree["params"]
    return tree
