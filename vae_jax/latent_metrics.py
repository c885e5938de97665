"""The AE and the VAE side by side: matched configs, reconstruction metrics, and how good prior samples are.

A deterministic autoencoder's codes need not fill N(0, I), so decoding z ~ N(0, I) gives whatever its
decoder does off its data; a VAE's KL term pulls q(z|x) towards N(0, I). This module measures that on
host arrays: :func:`nearest_neighbor_distance` (decoded images that look like digits sit about as close
to the training set as decoded test reconstructions do) and :func:`classifier_confidence` of a
logistic regression (:func:`fit_digit_classifier`; digit-like images get confident, low-entropy
predictions). :class:`AEVAEConfig` and :func:`matched_configs` build an AE and a VAE that differ only
in the KL term (the AE's ``bce`` is the VAE's Bernoulli NLL).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import losses, tasks
from vae_jax.arrays import apply_in_batches, standard_normal
from vae_jax.errors import field
from vae_jax.protocol import TrainConfig
from vae_jax.tasks.vae import require_widths

MODEL_KINDS = ("ae", "vae")


@dataclasses.dataclass(frozen=True)
class AEVAEConfig(TrainConfig):
    """Flags shared by the studies that train a matched AE and VAE."""

    hidden: tuple[int, ...] = field((400,), "MLP encoder widths of both models (the decoders mirror them)")

    def validate(self) -> None:
        super().validate()
        require_widths("hidden", self.hidden)


def matched_configs(config: AEVAEConfig, latent_dim: int, workdir: str) -> dict:
    """``{"ae": AEConfig, "vae": VAEConfig}`` with ``config``'s training flags, ``latent_dim``, and
    sub-workdirs ``workdir/ae_z{latent_dim}`` and ``workdir/vae_z{latent_dim}``."""
    common = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
    common.update(hidden=tuple(config.hidden), latent_dim=latent_dim)
    own = {
        "ae": (tasks.AEConfig, dict(variant="plain", arch="mlp", loss="bce", output="sigmoid")),
        "vae": (tasks.VAEConfig, dict(likelihood="bernoulli", beta=1.0)),
    }
    return {
        kind: cls(**{**common, "workdir": os.path.join(workdir, f"{kind}_z{latent_dim}")}, **settings)
        for kind, (cls, settings) in own.items()
    }


def build_task(kind: str, config, image_shape):
    """``(model, Task)`` of an ``"ae"`` or ``"vae"`` config from :func:`matched_configs`."""
    if kind == "ae":
        return tasks.ae_task(config, image_shape)
    if kind == "vae":
        return tasks.vae_task(config, image_shape)
    raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")


def encode(kind: str, model, params, x: np.ndarray) -> np.ndarray:
    """The deterministic code ``[N, D]``: the AE's z, or the VAE's posterior mean."""
    return tasks.ae_encode(model, params, x) if kind == "ae" else tasks.encode_means(model, params, x)


def _decode_logits(model, params, z):
    return model.apply({"params": params}, z, method=model.decode)


def decode_logits(model, params, z: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Decoder logits ``[N, H, W, C]`` of codes ``[N, D]`` (both models' ``decode`` returns logits)."""
    return apply_in_batches(_decode_logits, model, params, np.asarray(z, np.float32), batch_size=batch_size)


def decode_images(model, params, z: np.ndarray) -> np.ndarray:
    """Decoded images sigmoid(logits) ``[N, H, W, C]`` in [0, 1]."""
    return np.asarray(jax.nn.sigmoid(decode_logits(model, params, z)))


def deterministic_reconstruction(kind: str, model, params, x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example ``bce`` (Bernoulli NLL in nats, summed over pixels) and ``mse`` (per pixel) ``[N]`` of
    decoding the deterministic code of ``x``: the same measure for AE and VAE."""
    logits = jnp.asarray(decode_logits(model, params, encode(kind, model, params, x)))
    bce = np.asarray(losses.bernoulli_nll(logits, jnp.asarray(x)))
    mse = np.asarray(losses.mean_squared_error(jax.nn.sigmoid(logits), jnp.asarray(x)))
    return {"bce": bce, "mse": mse}


# --- how good are decoded prior samples ----------------------------------------------


def nearest_neighbor_distance(queries: np.ndarray, references: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Euclidean distance ``[N]`` from each of ``queries`` ``[N, ...]`` to its nearest of ``references`` ``[M, ...]``.

    Uses ||q - r||^2 = ||q||^2 + ||r||^2 - 2 q.r on the device, ``chunk``
    queries at a time, in float32 (clipped at 0 before the square root).
    """
    q_all = jnp.asarray(np.asarray(queries, np.float32).reshape(len(queries), -1))
    r = jnp.asarray(np.asarray(references, np.float32).reshape(len(references), -1))
    r_sq = jnp.sum(r * r, axis=1)  # [M]
    return np.concatenate([np.asarray(_nearest(q_all[i : i + chunk], r, r_sq)) for i in range(0, len(q_all), chunk)])


@jax.jit
def _nearest(q, r, r_sq):  # [n, d], [M, d], [M] -> [n]; the references are inputs, not constants of the program
    d2 = jnp.sum(q * q, axis=1)[:, None] + r_sq[None, :] - 2.0 * q @ r.T  # [n, M]
    return jnp.sqrt(jnp.maximum(jnp.min(d2, axis=1), 0.0))


SKLEARN_MODULES = ("sklearn.manifold", "sklearn.mixture", "sklearn.linear_model")  # the analyses' estimators


def import_sklearn_in_background(plans) -> threading.Thread | None:
    """Starts importing :data:`SKLEARN_MODULES` in a daemon thread when any of ``plans`` (the
    :class:`vae_jax.workdir.WorkdirPlan` of each run an experiment trains) has epochs to train; call it before
    training. The import is slow (scipy.stats and pandas come with it: docs/benchmarks.md), and the user
    would otherwise wait for it after the last epoch; here it runs beside compilation and training. A rerun
    with nothing to train reuses its report, and the import would only slow it. A module that fails to import is left for the
    analysis that imports it to report; a process that ends first does not wait for the thread."""
    if all(plan.nothing_to_train for plan in plans):
        return None

    def run():
        with contextlib.suppress(Exception):
            for name in SKLEARN_MODULES:
                importlib.import_module(name)

    thread = threading.Thread(target=run, name="import-sklearn", daemon=True)
    thread.start()
    return thread


def cached_by_inputs(name: str, build_fn, arrays: tuple, **settings) -> tuple:
    """:func:`vae_jax.data.caches.cached_by_inputs` with scikit-learn's version in the key as well (the analyses
    here fit with it)."""
    import sklearn

    from vae_jax.data import caches

    return caches.cached_by_inputs(name, build_fn, arrays, versions=(sklearn.__version__,), **settings)


def fit_digit_classifier(x_train: np.ndarray, y_train: np.ndarray, max_examples: int = 10000, seed: int = 0):
    """A multinomial logistic regression on flattened pixels (scikit-learn), fit on at most ``max_examples``
    drawn at random (stored ``uint8`` pixels are converted after the draw); the weights are kept in the user
    cache (:func:`cached_by_inputs`). The fit runs on one BLAS thread: its products are too small to gain
    from more, which only contend with each other and with JAX's thread pool (docs/benchmarks.md)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x_train))[:max_examples]
    x_drawn, y_drawn = np.asarray(x_train[idx]), np.asarray(y_train[idx])
    coef, intercept, classes = cached_by_inputs(
        "digit_classifier-v2", lambda: _fit_logistic(x_drawn, y_drawn), (x_drawn, y_drawn), max_iter=300, C=0.1
    )
    classifier = LogisticRegression(max_iter=300, C=0.1)
    classifier.coef_, classifier.intercept_, classifier.classes_ = coef, intercept, classes
    classifier.n_features_in_ = coef.shape[1]
    return classifier


def _fit_logistic(x_drawn: np.ndarray, y_drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(coef_, intercept_, classes_)`` of the logistic regression :func:`fit_digit_classifier` describes."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from vae_jax.arrays import pixels_to_float

    x = np.asarray(pixels_to_float(x_drawn), np.float64)
    with threadpool_limits(limits=1):
        classifier = LogisticRegression(max_iter=300, C=0.1).fit(x.reshape(len(x), -1), y_drawn)
    return classifier.coef_, classifier.intercept_, classifier.classes_


def classifier_confidence(classifier, images: np.ndarray) -> dict[str, float]:
    """Mean max-class probability and mean predictive entropy (nats) of ``classifier`` on ``images``: near 1
    and 0 for digit-like images; the entropy of a uniform guess over K classes is log K."""
    probs = classifier.predict_proba(np.asarray(images, np.float64).reshape(len(images), -1))  # [N, K]
    entropy = -np.sum(probs * np.log(np.clip(probs, 1e-12, 1.0)), axis=1)
    return {"mean_max_prob": float(np.mean(np.max(probs, axis=1))), "mean_entropy": float(np.mean(entropy))}


def image_quality(images: np.ndarray, x_train: np.ndarray, classifier=None) -> dict:
    """How digit-like ``images`` ``[N, H, W, C]`` are: ``nn_distance_mean`` (mean Euclidean distance to the
    nearest training image) and, with a ``classifier``, its :func:`classifier_confidence` on them."""
    out = {"nn_distance_mean": float(np.mean(nearest_neighbor_distance(images, x_train)))}
    if classifier is not None:
        out.update(classifier_confidence(classifier, images))
    return out


def prior_sample_quality(
    kind: str,
    model,
    params,
    key: jax.Array,
    x_train: np.ndarray,
    x_test: np.ndarray,
    classifier,
    num_samples: int = 1000,
) -> dict:
    """Decodes ``num_samples`` z ~ N(0, I) and the test reconstructions and measures both.

    Returns :func:`image_quality` of ``prior_samples`` and of ``test_reconstructions``; their
    ``nn_distance_ratio`` (samples / reconstructions: 1 when samples are as close to the data as
    reconstructions are); ``code_std`` ``[D]`` and ``code_mean_norm`` of the test codes (how far from
    N(0, I) they live).
    """
    codes = encode(kind, model, params, x_test)
    images = {
        "prior_samples": decode_images(model, params, standard_normal(key, (num_samples, model.latent_dim))),
        "test_reconstructions": decode_images(model, params, codes[:num_samples]),
    }
    out = {name: image_quality(x, x_train, classifier) for name, x in images.items()}
    out["nn_distance_ratio"] = (
        out["prior_samples"]["nn_distance_mean"] / out["test_reconstructions"]["nn_distance_mean"]
    )
    out["code_std"] = [float(s) for s in codes.std(axis=0)]
    out["code_mean_norm"] = float(np.linalg.norm(codes.mean(axis=0)))
    return out
