"""Helpers shared by every family's task module: batched model queries on host arrays (defined in
:mod:`vae_jax.arrays`, which the maths uses too).

A query is a module-level function ``query(model, params, *batches, **options) -> array``.
:func:`apply_in_batches` runs it through one jitted program with the model (a hashable flax module)
and the options as static arguments and the params as an input; the last batch is padded to the
others' shape, so every call with the same model and batch size reuses one compiled program, which
the persistent compilation cache can keep across runs.
"""

from vae_jax.arrays import apply_in_batches  # noqa: F401 (re-exported)
