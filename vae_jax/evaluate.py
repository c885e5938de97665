"""Honest evaluation: per-example test metrics, ELBO, IWAE-k likelihood, bits/dim, active units.

Evaluation runs over the test set in fixed-size batches inside one compiled ``lax.map`` with a fixed
key, so repeating it gives the same numbers. Every VAE family hands :func:`evaluate_runs`, the one
evaluation of a VAE, its :class:`VAEEvalParts` (the objective contract of :mod:`vae_jax.objectives`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import losses, objectives
from vae_jax.arrays import bare_params, batch_to_float

EVAL_SEED = 20140101  # the evaluation key is fixed, and independent of the training seeds


def _check_positive_int(value, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def eval_key() -> jax.Array:
    """The fixed key of every evaluation, so a checkpoint evaluated twice gives the same numbers."""
    return jax.random.key(EVAL_SEED)


def map_batches(fn: Callable, data: dict, batch_size: int, batch_sharding=None) -> dict:
    """Applies ``fn(batch, batch_index) -> dict of [b, ...]`` over ``data`` in batches: outputs ``[N, ...]``.

    Traceable; one batch's intermediates are alive at a time. Batch i holds rows ``i * batch_size`` on,
    taken by index (the last padded with copies of the last row, whose outputs are dropped), so ``data``
    split over devices is never gathered whole. Each batch is constrained to ``batch_sharding`` if given.
    """
    _check_positive_int(batch_size, "batch_size")
    leaves = jax.tree_util.tree_leaves(data)
    shapes = [jnp.shape(a) for a in leaves]
    if not leaves or any(jnp.ndim(a) == 0 for a in leaves):
        raise ValueError(f"data must hold arrays with the examples on axis 0, got shapes {shapes}")
    n = leaves[0].shape[0]
    if n == 0 or any(a.shape[0] != n for a in leaves):
        raise ValueError(f"data must hold at least one example and the same number in every array, got shapes {shapes}")
    batch_size = min(batch_size, n)
    num_batches = -(-n // batch_size)

    def body(i):
        rows = jnp.minimum(i * batch_size + jnp.arange(batch_size), n - 1)
        batch = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[rows], data)
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return fn(batch, i)

    out = jax.lax.map(body, jnp.arange(num_batches))
    return jax.tree_util.tree_map(lambda o: o.reshape(num_batches * batch_size, *o.shape[2:])[:n], out)


def per_example_eval(eval_fn: Callable, batch_size: int, batch_sharding=None) -> Callable:
    """``(params, data, key) -> dict of [N]``: ``eval_fn`` over ``data`` in batches (traceable, not jitted).

    Each batch is converted to float32 in [0, 1] (``data["x"]`` may be ``uint8``); batch i gets ``fold_in(key, i)``.
    """

    def run(params, data, key):
        return map_batches(
            lambda batch, i: eval_fn(params, batch_to_float(batch), jax.random.fold_in(key, i)),
            data,
            batch_size,
            batch_sharding,
        )

    return run


def make_per_example_eval(eval_fn: Callable, batch_size: int):
    """Jitted :func:`per_example_eval` of one model: ``(params, data, key) -> dict of [N]``."""
    return jax.jit(per_example_eval(eval_fn, batch_size))


def make_replicated_eval(eval_fn: Callable, batch_size: int, batch_sharding=None):
    """As :func:`make_per_example_eval`, vmapped over replica params: dict of ``[R, N]`` (``batch_sharding``:
    as in :func:`map_batches`)."""
    return jax.jit(jax.vmap(per_example_eval(eval_fn, batch_size, batch_sharding), in_axes=(0, None, None)))


def iwae_nll_from_log_weights(
    log_weights_fn: Callable, params, batch: dict, key: jax.Array, k: int, k_chunk: int = 100
) -> jax.Array:
    """-L_k per example ``[B]`` from a family's ``log_weights_fn(params, batch, key, k) -> [B, k]``.

    L_k = log (1/k) sum_j w_j (Burda et al. 2016). The k samples are drawn
    ``k_chunk`` at a time (chunk i from ``fold_in(key, i)``), so memory stays
    at ``B * k_chunk`` decoded images however large k is. Traceable.
    """
    _check_positive_int(k, "k")
    _check_positive_int(k_chunk, "k_chunk")
    k_chunk = min(k_chunk, k)
    num_chunks = -(-k // k_chunk)
    batch_size = jax.tree_util.tree_leaves(batch)[0].shape[0]

    def chunk(i):
        return log_weights_fn(params, batch, jax.random.fold_in(key, i), k_chunk)

    log_w = jax.lax.map(chunk, jnp.arange(num_chunks))  # [chunks, B, k_chunk]
    log_w = jnp.moveaxis(log_w, 0, 1).reshape(batch_size, -1)[:, :k]  # [B, k]
    return -losses.iwae_bound(log_w, axis=-1)


def active_units(posterior_means: np.ndarray, threshold: float = 0.01) -> tuple[int, np.ndarray]:
    """Latent dimensions whose posterior mean varies across the data: (their number, variance ``[D]``).

    A_u = Cov_x(E_{q(z|x)}[z_u]) > threshold (Burda et al. 2016, section 5.2), from the ``[N, D]``
    posterior means of the test images.
    """
    posterior_means = np.asarray(posterior_means, np.float64)
    if posterior_means.ndim != 2 or posterior_means.shape[0] < 1:
        raise ValueError(f"posterior_means must be [N, D] with N >= 1, got shape {posterior_means.shape}")
    variance = np.var(posterior_means, axis=0)
    return int(np.sum(variance > threshold)), variance


def bits_per_dim(nll_nats: float, num_dims: int) -> float:
    """Converts a per-example NLL in nats to bits per dimension."""
    _check_positive_int(num_dims, "num_dims")
    return float(nll_nats) / (num_dims * math.log(2.0))


@dataclasses.dataclass(frozen=True)
class VAEEvalParts:
    """What evaluating one VAE family needs (the objective contract of :mod:`vae_jax.objectives`).

    Attributes:
      eval_fn: the training task's ``(params, batch, key) -> dict of [B]`` single-sample terms
        (``neg_elbo``, ``recon``, ``kl`` and extras such as ``kl_z1``), as ``summary.json`` reports them.
      log_weights_fn: ``(params, batch, key, k) -> [B, k]`` importance log-weights.
      posterior_mean_fn: ``(params, batch) -> {layer name: [B, D_layer]}``, for active units per layer.
      needs_labels: whether ``batch`` must carry ``y`` (the conditional VAE).
    """

    eval_fn: Callable
    log_weights_fn: Callable
    posterior_mean_fn: Callable
    needs_labels: bool = False


def gaussian_vae_parts(model, eval_fn: Callable, likelihood: str, decoder_logvar: float = 0.0) -> VAEEvalParts:
    """Parts of a one-level :class:`~vae_jax.models.vae.GaussianVAE` (MLP, conv, conditional).

    ``eval_fn``: e.g. the ``eval_fn`` of :func:`vae_jax.objectives.make_elbo_objective` with
    :func:`vae_jax.objectives.make_gaussian_vae_terms`. A conditional model's
    conditions (``model.conditions``, the CVAE's true label ``y``) are read from the batch.
    """
    conditions = tuple(getattr(model, "conditions", ()))

    def posterior_mean_fn(params, batch):
        return {
            "z": model.apply({"params": params}, batch["x"], *(batch[c] for c in conditions), method=model.encode)[0]
        }

    return VAEEvalParts(
        eval_fn=eval_fn,
        log_weights_fn=objectives.make_gaussian_vae_log_weights(model, likelihood, decoder_logvar),
        posterior_mean_fn=posterior_mean_fn,
        needs_labels=bool(conditions),
    )


def likelihood_measure(likelihood: str, x: np.ndarray) -> str:
    """What -log p(x) means for this decoder and these targets (stored beside every NLL): a cross-entropy
    for a Bernoulli decoder on gray-level targets, a density for a Gaussian decoder."""
    binary = bool(np.all((x == 0) | (x == 1)))
    if likelihood == "bernoulli":
        return (
            "negative log-likelihood (binary targets)"
            if binary
            else "cross-entropy (Bernoulli decoder on gray-level targets; not a normalised likelihood, "
            "binarize the data for likelihoods comparable with the literature)"
        )
    return "negative log-density (Gaussian decoder on continuous pixel values; not a discrete likelihood)"


IWAE_STREAM = 1  # the IWAE samples use fold_in(eval_key(), IWAE_STREAM), apart from the ELBO's key


def evaluate_runs(
    parts: VAEEvalParts,
    replicated_params,
    data: dict,
    *,
    iwae_k: int = 1000,
    eval_batch_size: int = 500,
    iwae_batch_size: int = 100,
    k_chunk: int = 100,
    batch_sharding=None,
    key: jax.Array | None = None,
    per_example: bool = False,
    bound_only: bool = False,
) -> list[dict]:
    """Test metrics of each replica (seed) of a run, in nats per example unless said otherwise.

    The single-sample terms are computed exactly as the training driver computes ``summary.json``'s test
    metrics (same ``eval_fn``, key, and batching with ``eval_batch_size``), so they agree with it. The
    IWAE-k bound uses its own key (``IWAE_STREAM``).

    Args:
      parts: the family's :class:`VAEEvalParts`.
      replicated_params: params with a leading ``[R]`` replica axis.
      data: ``{"x": [N, H, W, C]}`` (and ``"y": [N]``) test arrays; ``x`` float
        in [0, 1] or the stored ``uint8``.
      batch_sharding: each batch is split over the devices of this sharding (``--devices``); the samples
        are the same, the results equal one device's to float rounding.
      key: the evaluation key (default :func:`eval_key`, the key ``summary.json``'s metrics use).
      per_example: also return ``iwae_nll_per_example`` (``[N]``, NumPy), e.g. for a paired comparison
        of two models; example i's bound is the same in any prefix of the data holding it.
      bound_only: only the IWAE-k bound (``iwae_k`` > 0), with the numbers of the full evaluation.

    Returns:
      One dict per replica: ``n``, ``neg_elbo``, ``recon``, ``kl`` (+ extras), ``iwae_k``, ``iwae_nll``
      (-L_k, an upper bound on -log p(x)) and ``bits_per_dim`` (both absent with ``iwae_k=0``),
      ``active_units`` (all layers), ``active_units_per_layer`` and ``latent_dims`` ``{layer: D}``.
      With ``bound_only``: ``n``, ``iwae_nll``, ``bits_per_dim``, ``iwae_k`` (and ``iwae_nll_per_example``).
    """
    replicated_params = bare_params(replicated_params)
    key = eval_key() if key is None else key
    if isinstance(iwae_k, bool) or not isinstance(iwae_k, (int, np.integer)) or iwae_k < 0:
        raise ValueError(f"iwae_k must be a non-negative integer (0: no IWAE bound), got {iwae_k!r}")
    if bound_only and not iwae_k:
        raise ValueError("bound_only needs an IWAE bound: iwae_k must be positive, got 0")
    if batch_sharding is None:
        data = jax.tree_util.tree_map(jnp.asarray, data)
    else:  # params and data from the host straight to every device of the mesh; each batch is then split
        everywhere = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
        replicated_params, data = jax.device_put((replicated_params, data), everywhere)
    elbo = {}
    if not bound_only:
        elbo = jax.device_get(
            make_replicated_eval(parts.eval_fn, eval_batch_size, batch_sharding)(replicated_params, data, key)
        )
    iwae_key = jax.random.fold_in(key, IWAE_STREAM)

    @jax.jit
    def iwae_and_means(params):
        def per_batch(batch, i):
            batch = batch_to_float(batch)  # the test images may be stored as uint8
            out = {} if bound_only else {"posterior_means": parts.posterior_mean_fn(params, batch)}
            if iwae_k:
                out["iwae_nll"] = iwae_nll_from_log_weights(
                    parts.log_weights_fn, params, batch, jax.random.fold_in(iwae_key, i), iwae_k, k_chunk
                )
            return out

        return map_batches(per_batch, data, iwae_batch_size, batch_sharding)

    num_replicas = jax.tree_util.tree_leaves(replicated_params)[0].shape[0]
    num_dims = int(np.prod(data["x"].shape[1:]))
    results = []
    for r in range(num_replicas):
        out = jax.device_get(iwae_and_means(jax.tree_util.tree_map(lambda a: a[r], replicated_params)))
        metrics = {"n": int(data["x"].shape[0]), **{name: float(np.mean(values[r])) for name, values in elbo.items()}}
        if iwae_k:
            iwae = float(np.mean(out["iwae_nll"]))
            metrics.update(iwae_nll=iwae, bits_per_dim=bits_per_dim(iwae, num_dims))
            if per_example:
                metrics["iwae_nll_per_example"] = np.asarray(out["iwae_nll"])
        metrics["iwae_k"] = int(iwae_k)
        if not bound_only:
            means = out["posterior_means"]
            dims = {name: int(m.shape[-1]) for name, m in means.items()}
            metrics.update(unit_entries({name: active_units(m)[0] for name, m in means.items()}, dims))
        results.append(metrics)
    return results


def unit_entries(per_layer: dict, latent_dims: dict) -> dict:
    """:func:`evaluate_runs`' active-unit entries from each layer's active units and size."""
    return {
        "active_units": int(sum(per_layer.values())),
        "active_units_per_layer": per_layer,
        "latent_dims": latent_dims,
    }


def count_params(params) -> int:
    """Number of scalars in a params pytree."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))
