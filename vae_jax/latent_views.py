"""Views of a trained VAE's latent space: t-SNE, the aggregate posterior as a Gaussian mixture, traversals.

:func:`tsne_2d` embeds latent codes in 2-D (van der Maaten & Hinton 2008). The aggregate posterior
q(z) = (1/N) sum_n q(z|x_n) is a mixture of N Gaussians, and prior samples z ~ N(0, I) land where q(z)
has little mass whenever it differs from the prior: :func:`prior_vs_mixture` fits a few-component
``GaussianMixture`` to samples of q(z) and measures decodings of both with :mod:`vae_jax.latent_metrics`.
:func:`latent_traversals` sweeps one dimension of a code (Higgins et al. 2017).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from vae_jax import arrays, diagnostics, latent_metrics
from vae_jax.tasks.vae import decode_means


def tsne_2d(codes: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """A 2-D t-SNE embedding ``[N, 2]`` of ``codes`` ``[N, D]`` (scikit-learn, PCA initialisation).

    It runs on one thread: each point's Barnes-Hut forces are summed alone, so the embedding is the
    same to the bit on any number of threads, and more threads gained little on 1,000 codes but lost
    several-fold whenever the cores were busy, JAX's own thread pool included (docs/benchmarks.md).
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = min(perplexity, (len(codes) - 1) / 3.0)
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed, n_jobs=1)
    with threadpool_limits(limits=1):
        return tsne.fit_transform(np.asarray(codes, np.float64))


@contextlib.contextmanager
def analysis_threads(workers: int = 1) -> Iterator[ThreadPoolExecutor]:
    """A pool for scikit-learn analyses (t-SNEs, say) to run beside each other or the caller's JAX work.

    scikit-learn's Barnes-Hut t-SNE gradient releases the GIL, so two embeddings take about the time
    of one on two cores. Every BLAS pool stays at one thread until the block ends: the fits here run
    on one thread anyway, and a limit entered and left in each thread could restore another thread's.
    Each result is the one its function gives alone: nothing is shared but the cores.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        yield pool


def sample_aggregate_posterior(posterior_means: np.ndarray, posterior_logvars: np.ndarray, seed: int) -> np.ndarray:
    """One z ~ q(z|x_n) per row ``[N, D]``: a sample of the aggregate posterior q(z)."""
    rng = np.random.default_rng(seed)
    return posterior_means + np.exp(0.5 * posterior_logvars) * rng.standard_normal(posterior_means.shape)


def fit_mixture(z: np.ndarray, n_components: int, seed: int = 0):
    """A full-covariance ``sklearn.mixture.GaussianMixture`` fitted to the latent samples ``z`` ``[N, D]``.

    The fit runs on one BLAS thread: its matrices are a few latent dimensions wide, so more threads
    only add their start-up and, beside JAX's own thread pool, contention (docs/benchmarks.md).
    """
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    mixture = GaussianMixture(n_components=n_components, covariance_type="full", random_state=seed, reg_covar=1e-4)
    with threadpool_limits(limits=1):
        return mixture.fit(np.asarray(z, np.float64))


def prior_vs_mixture(
    model,
    params,
    x_train: np.ndarray,
    key: jax.Array,
    *,
    n_components: int = 10,
    num_samples: int = 500,
    classifier=None,
    seed: int = 0,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Decoded samples from N(0, I) and from a GaussianMixture fitted to q(z), and their measured quality.

    Returns:
      ``(quality, prior_images, mixture_images)``: ``quality`` has
      ``prior`` and ``mixture`` dicts (:func:`vae_jax.latent_metrics.image_quality`), ``n_components``
      and the mixture's average log-likelihood of N(0, I) samples vs of q(z)
      samples; the images are ``[num_samples, H, W, C]``.
    """
    means, logvars = diagnostics.encode_posteriors(model, params, x_train)
    z_q = sample_aggregate_posterior(means, logvars, seed)
    mixture = fit_mixture(z_q, n_components, seed)
    z_prior = arrays.standard_normal(key, (num_samples, means.shape[1]))
    z_mixture, _ = mixture.sample(num_samples)
    z_mixture = z_mixture[np.random.default_rng(seed).permutation(num_samples)]  # sklearn returns them by component
    prior_images = decode_means(model, params, z_prior.astype(np.float32))
    mixture_images = decode_means(model, params, z_mixture.astype(np.float32))
    quality = {
        "n_components": n_components,
        "num_samples": num_samples,
        "prior": latent_metrics.image_quality(prior_images, x_train, classifier),
        "mixture": latent_metrics.image_quality(mixture_images, x_train, classifier),
        "mixture_loglik_of_prior_samples": float(mixture.score(z_prior)),
        "mixture_loglik_of_posterior_samples": float(mixture.score(z_q)),
    }
    return quality, prior_images, mixture_images


def latent_traversals(model, params, x: np.ndarray, dims, values) -> np.ndarray:
    """Decodings ``[len(dims), len(values), H, W, C]`` of x's posterior mean with dimension d set to each value."""
    means, _ = diagnostics.encode_posteriors(model, params, x[None])
    codes = np.repeat(np.repeat(means, len(dims), 0)[:, None], len(values), 1)  # [dims, values, D]
    for i, d in enumerate(dims):
        codes[i, :, d] = values
    images = decode_means(model, params, codes.reshape(-1, means.shape[1]).astype(np.float32))
    return images.reshape(len(dims), len(values), *images.shape[1:])
