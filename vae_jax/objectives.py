"""Training objectives: a model plus the pure losses -> ``loss_fn(params, batch, key, step)``.

A ``loss_fn`` returns ``(scalar loss, metrics)``, the batch mean of a per-example loss and a dict
of batch-mean scalars; :func:`vae_jax.train.make_train_step` differentiates it.

The VAE objective contract
--------------------------
Every VAE family (MLP, convolutional, conditional, hierarchical) provides

* ``terms_fn(params, batch, key) -> dict`` of per-example arrays, with
  ``batch = {"x": [B, H, W, C] in [0, 1], "y": [B] int (optional)}``:

  - ``"recon"`` ``[B]``: -log p(x|z) in nats for ONE z ~ q(z|x), every
    constant included;
  - ``"kl"`` ``[B]``: the KL term of the ELBO, so neg_elbo = recon + kl;
  - ``"kl_per_dim"`` ``[B, D]``: per-latent-dimension terms summing to ``kl``
    (free bits and the collapse diagnostics use them);
  - optional extra ``[B]`` entries (e.g. ``"kl_z1"``), reported as metrics.

* optionally ``log_weights_fn(params, batch, key, k) -> [B, k]``: importance
  log-weights log p(x, z_j) - log q(z_j|x) with z_j ~ q(z|x) (for the IWAE
  objective and IWAE evaluation).

:func:`make_elbo_objective` turns them into ``(loss_fn, eval_fn)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from vae_jax import losses, schedules

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_shared_var", "gaussian_pixel_var")
# Likelihoods whose decoder output holds 2C channels: C mean logits, then C log-variances.
LEARNED_VARIANCE = ("gaussian_shared_var", "gaussian_pixel_var")
# Soft lower bound on a learned decoder log-variance (sigma >= ~0.05). Without it a pixel that is
# constant in the data (MNIST's black border) drives its variance to 0 and its log-density to +infinity.
MIN_LEARNED_LOGVAR = -6.0

LossFn = Callable[[dict, dict, jax.Array, jax.Array], tuple[jax.Array, dict]]
TermsFn = Callable[[dict, dict, jax.Array], dict]
LogWeightsFn = Callable[[dict, dict, jax.Array, int], jax.Array]


def soft_clip_logvar(raw_logvar: jax.Array, minimum: float = MIN_LEARNED_LOGVAR) -> jax.Array:
    """``minimum + softplus(raw - minimum)``: a smooth lower bound on a learned log-variance."""
    return minimum + jax.nn.softplus(raw_logvar - minimum)


def reconstruction_nll(likelihood: str, decoder_out: jax.Array, x: jax.Array, decoder_logvar: float = 0.0) -> jax.Array:
    """-log p(x|z) per example ``[B]`` for the decoder output, every constant included.

    * ``bernoulli``: ``decoder_out`` ``[B, H, W, C]`` holds per-pixel logits.
    * ``gaussian``: N(x; sigmoid(decoder_out), c I) with fixed ``log c = decoder_logvar``:
      -log p = ||x - mean||^2 / (2c) + (D/2) log(2 pi c). C = 1/(2c) weighs reconstruction
      against the KL (small c, sharp reconstructions; large c, the posterior collapses to the prior).
    * ``gaussian_shared_var``: ``decoder_out`` ``[B, H, W, 2C]``; the first C channels are mean
      logits, the last C a log-variance that the model makes one learned scalar shared by every
      pixel and image (the sigma-VAE of Rybkin et al. 2021, whose optimum is c = the MSE).
    * ``gaussian_pixel_var``: the same layout with a log-variance map predicted
      per pixel by the decoder.

    Learned log-variances pass through :func:`soft_clip_logvar`.
    """
    if likelihood == "bernoulli":
        return losses.bernoulli_nll(decoder_out, x)
    if likelihood == "gaussian":
        return losses.gaussian_nll(x, jax.nn.sigmoid(decoder_out), decoder_logvar)
    if likelihood in LEARNED_VARIANCE:
        mean_logits, raw_logvar = jnp.split(decoder_out, 2, axis=-1)
        return losses.gaussian_nll(x, jax.nn.sigmoid(mean_logits), soft_clip_logvar(raw_logvar))
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def decoder_mean(decoder_out: jax.Array, image_channels: int | None = None) -> jax.Array:
    """The image a decoder output stands for: E[x|z] in [0, 1] for every likelihood.

    With a learned variance the output has 2C channels; pass ``image_channels``
    = C to keep the mean half.
    """
    if image_channels is not None:
        decoder_out = decoder_out[..., :image_channels]
    return jax.nn.sigmoid(decoder_out)


def binarize_batch(key: jax.Array, x: jax.Array, dynamic: bool) -> tuple[jax.Array, jax.Array]:
    """Splits ``key`` in two; with ``dynamic``, Bernoulli-samples ``x`` from its gray values with the first.

    Returns ``(x, key)``: the (possibly binarized) batch and the second key for the rest of the step.
    """
    binarize_key, rest_key = jax.random.split(key)
    if dynamic:
        x = jax.random.bernoulli(binarize_key, x).astype(x.dtype)
    return x, rest_key


# --- the single-stochastic-layer Gaussian VAE (MLP, convolutional, conditional) -------------


def _conditions(model, batch: dict) -> list:
    """The batch entries ``model`` conditions on (``model.conditions``: the CVAE's label ``y``; none otherwise)."""
    return [batch[name] for name in getattr(model, "conditions", ())]


def make_gaussian_vae_terms(model, likelihood: str = "bernoulli", decoder_logvar: float = 0.0) -> TermsFn:
    """``terms_fn`` of a :class:`~vae_jax.models.vae.GaussianVAE` (MLP, convolutional or conditional VAE).

    One pass ``model.apply(..., x, *conditions, key)`` -> (decoder_out, mean, logvar, z):
    ``recon`` = -log p(x|z) (:func:`reconstruction_nll`), ``kl_per_dim`` the closed form
    :func:`vae_jax.losses.gaussian_kl` per dimension. The conditions (``model.conditions``,
    e.g. ``y``) are read from the batch.
    """

    def terms_fn(params, batch, key):
        x = batch["x"]
        decoder_out, mean, logvar, _ = model.apply({"params": params}, x, *_conditions(model, batch), key)
        kl_per_dim = losses.gaussian_kl(mean, logvar, event_ndim=0)  # [B, D]
        return {
            "recon": reconstruction_nll(likelihood, decoder_out, x, decoder_logvar),
            "kl": jnp.sum(kl_per_dim, axis=-1),
            "kl_per_dim": kl_per_dim,
        }

    return terms_fn


def posterior_samples(key: jax.Array, mean: jax.Array, logvar: jax.Array, k: int) -> jax.Array:
    """``k`` reparameterized draws per example from N(mean, diag(exp(logvar))): ``[B, D]`` -> ``[B, k, D]``.

    Example-major: the noise is one ``[B, k, D]`` standard-normal draw, made
    in at least float32 and cast to the model's dtype
    (:func:`vae_jax.losses.reparameterize`). Every importance-sampling
    estimate (IWAE training and evaluation of every Gaussian VAE) draws its samples here.
    """
    return losses.reparameterize(
        key, jnp.broadcast_to(mean[:, None], (mean.shape[0], k, mean.shape[-1])), logvar[:, None]
    )


def make_gaussian_vae_log_weights(model, likelihood: str = "bernoulli", decoder_logvar: float = 0.0) -> LogWeightsFn:
    """``log_weights_fn(params, batch, key, k) -> [B, k]`` for the models of :func:`make_gaussian_vae_terms`.

    log w_j = log p(x|z_j) + log N(z_j; 0, I) - log q(z_j|x), z_j ~ q(z|x)
    (:func:`posterior_samples`). The encoder runs once; the decoder runs on
    the ``B * k`` samples, each with its example's conditions. It serves IWAE training
    (:func:`make_elbo_objective`) and evaluation (:func:`vae_jax.evaluate.gaussian_vae_parts`).
    """

    def log_weights_fn(params, batch, key, k):
        x, conditions = batch["x"], _conditions(model, batch)
        mean, logvar = model.apply({"params": params}, x, *conditions, method=model.encode)  # [B, D]
        z = posterior_samples(key, mean, logvar, k)  # [B, k, D]
        repeated = [jnp.repeat(c, k, axis=0) for c in conditions]  # example-major like z
        decoder_out = model.apply({"params": params}, z.reshape(-1, z.shape[-1]), *repeated, method=model.decode)
        x_rep = jnp.repeat(x, k, axis=0)  # [B*k, H, W, C]
        log_px_z = -reconstruction_nll(likelihood, decoder_out, x_rep, decoder_logvar).reshape(x.shape[0], k)
        return losses.vae_log_weights(log_px_z, z, mean[:, None], logvar[:, None])

    return log_weights_fn


# --- ELBO, beta schedules, free bits, IWAE ----------------------------------------------


def free_bits_kl(kl_per_dim: jax.Array, free_bits: float) -> jax.Array:
    """The KL term with a per-dimension floor: sum_d max(KL_d, lambda), per example ``[B]``.

    Free bits (Kingma et al. 2016, eq. 15) keep the objective from gaining
    anything by pushing a latent dimension's KL below ``lambda`` nats, so the
    optimizer has no incentive to collapse it. Kingma et al. floor the
    minibatch mean of each dimension's KL; here the floor is applied per
    example (the stronger constraint), so an example's loss does not depend on
    which other examples share its batch and the per-example contract of
    :mod:`vae_jax.losses` holds. With ``lambda = 0`` it is the plain KL.
    ``kl_per_dim``: ``[B, D]``; ``free_bits``: lambda, nats per dimension (>= 0).
    """
    return jnp.sum(jnp.maximum(kl_per_dim, free_bits), axis=-1)


def _extras(terms: dict) -> dict:
    return {k: v for k, v in terms.items() if k not in ("recon", "kl", "kl_per_dim")}


def make_elbo_objective(
    terms_fn: TermsFn,
    log_weights_fn: LogWeightsFn | None = None,
    *,
    beta_schedule: schedules.BetaSchedule | None = None,
    free_bits: float = 0.0,
    iwae_k: int = 1,
    dynamic_binarize: bool = False,
) -> tuple[LossFn, Callable]:
    """``(loss_fn, eval_fn)`` for a VAE family given its ``terms_fn`` (see the module docstring).

    Per example, the minimised objective is

        recon + beta(step) * sum_d max(KL_d, free_bits)        (iwae_k = 1)
        -log (1/k) sum_j w_j                                    (iwae_k > 1)

    The first is the negative ELBO for beta = 1 and free_bits = 0 (Kingma &
    Welling 2014), the beta-VAE for beta > 1 (Higgins et al. 2017), KL
    annealing for a schedule (Bowman et al. 2016; Fu et al. 2019) and free
    bits (Kingma et al. 2016) for free_bits > 0. The second is the IWAE bound
    L_k (Burda et al. 2016); it needs ``log_weights_fn`` and is defined only
    for beta = 1 and free_bits = 0 (the bound has no KL term to weigh or floor),
    so ``beta_schedule`` must then be left None.

    ``loss_fn(params, batch, key, step) -> (loss, metrics)``: ``loss`` is the
    batch mean of the objective above; ``metrics`` are batch means of ``loss``,
    ``neg_elbo`` (UNWEIGHTED recon + kl, always), ``recon``, ``kl``, ``beta``
    (the schedule's value at ``step``), the extra terms, and ``neg_iwae_bound``
    when iwae_k > 1 (equal to ``loss``). With ``dynamic_binarize`` the batch is
    Bernoulli-sampled from its gray values first (a key split from ``key``).

    ``eval_fn(params, batch, key) -> dict of [B]``: ``neg_elbo``, ``recon``,
    ``kl`` and the extras, with beta = 1 and no floor.
    """
    if free_bits < 0:
        raise ValueError(f"free_bits must be >= 0, got {free_bits}")
    if iwae_k < 1:
        raise ValueError(f"iwae_k must be >= 1, got {iwae_k}")
    if iwae_k > 1:
        if log_weights_fn is None:
            raise ValueError("iwae_k > 1 needs a log_weights_fn")
        if free_bits != 0 or beta_schedule is not None:
            raise ValueError("the IWAE objective (iwae_k > 1) is defined only for beta = 1 without free bits")
    beta_schedule = schedules.constant(1.0) if beta_schedule is None else beta_schedule

    def loss_fn(params, batch, key, step):
        x, key = binarize_batch(key, batch["x"], dynamic_binarize)
        batch = {**batch, "x": x}
        terms_key, iwae_key = jax.random.split(key)
        terms = terms_fn(params, batch, terms_key)
        recon, kl = terms["recon"], terms["kl"]
        beta = jnp.asarray(beta_schedule(step), recon.dtype)
        metrics = {"neg_elbo": jnp.mean(recon + kl), "recon": jnp.mean(recon), "kl": jnp.mean(kl), "beta": beta}
        metrics.update({name: jnp.mean(v) for name, v in _extras(terms).items()})
        if iwae_k > 1:
            per_example = -losses.iwae_bound(log_weights_fn(params, batch, iwae_key, iwae_k))
            metrics["neg_iwae_bound"] = jnp.mean(per_example)
        else:
            kl_term = free_bits_kl(terms["kl_per_dim"], free_bits) if free_bits > 0 else kl
            per_example = recon + beta * kl_term
        loss = jnp.mean(per_example)
        metrics["loss"] = loss
        return loss, metrics

    def eval_fn(params, batch, key):
        terms = terms_fn(params, batch, key)
        return {"neg_elbo": terms["recon"] + terms["kl"], "recon": terms["recon"], "kl": terms["kl"], **_extras(terms)}

    return loss_fn, eval_fn
