"""Mixed precision: compute in bfloat16, keep params, optimizer state and losses in float32.

``--precision bf16`` wraps the model a training loss calls in :func:`compute_in`: each ``apply`` casts the
float32 params and float inputs to bfloat16, runs the network, and casts the float outputs back to float32.
The gradient of a cast is the cast back, so gradients, params and optimizer moments stay float32 (the "master
weights" of Micikevicius et al. 2018, "Mixed Precision Training"); bfloat16 keeps float32's exponent range, so
no loss scaling is needed. Evaluation and figures use the unwrapped float32 model.

One sum needs float32 on purpose: a bias's gradient adds up the output's gradient over every position the
bias was added at, and summed in bfloat16 it stalls after a few hundred terms. The models add their biases and
shared variances in float32 (:func:`vae_jax.models.layers.add_bias`), and sum an embedding table's gradient in
float32 (:class:`vae_jax.models.layers.Embed`): ``flax.linen``'s own layers given ``dtype=bfloat16`` make both
sums in bfloat16, 67-92% off float32's at a few thousand terms (``tests/test_layers.py``).

On CPU bfloat16 is emulated and usually slower: the option is for GPUs and TPUs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.errors import field

PRECISIONS = ("f32", "bf16")
_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


def _cast_floats(tree, dtype):
    def cast(a):
        if isinstance(a, jax.Array | np.ndarray | float) and jnp.issubdtype(jnp.result_type(a), jnp.floating):
            return jnp.asarray(a, dtype)
        return a

    return jax.tree_util.tree_map(cast, tree)


class ComputeIn:
    """A flax module whose ``apply`` computes in ``dtype`` and returns float32 (see the module docstring).

    Every other attribute (``init``, ``encode``, ``latent_dim``, ...) is the wrapped module's.
    """

    def __init__(self, module, dtype):
        self.module = module
        self.dtype = dtype

    def apply(self, variables, *args, **kwargs):
        variables = _cast_floats(variables, self.dtype)
        args = _cast_floats(args, self.dtype)
        out = self.module.apply(variables, *args, **kwargs)
        return _cast_floats(out, jnp.float32)

    def __getattr__(self, name):
        return getattr(self.module, name)


def compute_in(module, precision: str):
    """``module`` itself for ``f32``; for ``bf16`` a :class:`ComputeIn` wrapper computing in bfloat16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return module if precision == "f32" else ComputeIn(module, _DTYPES[precision])


def config_field(bf16_compute: str = "bfloat16 compute"):
    """A config's ``precision`` field (``--precision f32|bf16``); ``bf16_compute`` says what bf16 runs in bfloat16."""
    return field(
        "f32",
        f"training compute: f32, or bf16 ({bf16_compute}; float32 params, optimizer state and "
        "losses; evaluation in float32)",
        choices=PRECISIONS,
    )
