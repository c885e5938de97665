"""A small image classifier (flax MLP + optax), used to measure which class generated images show.

The conditional VAE's independent judge: trained on the real training split only, its own test
accuracy is reported beside the fraction of generated images it assigns to the requested class (cf.
the "classification accuracy score" of Ravuri & Vinyals 2019, which trains in the other direction).
Training is a jitted, scan-fused epoch of Adam steps on the mean softmax cross-entropy.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import compiling
from vae_jax.arrays import apply_in_batches
from vae_jax.data import caches


class MLPClassifier(nn.Module):
    """``[B, H, W, C]`` images -> ``[B, num_classes]`` logits: a ReLU MLP."""

    num_classes: int
    hidden: Sequence[int] = (256,)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(self.num_classes, name="logits")(h)


def class_probabilities(model: MLPClassifier, params, x: jax.Array) -> jax.Array:
    """Softmax class probabilities ``[B, K]`` of images ``x`` ``[B, H, W, C]`` (a query for ``apply_in_batches``)."""
    return jax.nn.softmax(model.apply({"params": params}, x), axis=-1)


@dataclasses.dataclass
class TrainedClassifier:
    """A trained classifier: ``model``, its ``params`` and its accuracy on the held-out test split."""

    model: MLPClassifier
    params: dict
    test_accuracy: float

    def predict_proba(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities ``[N, K]`` of images ``[N, H, W, C]`` in [0, 1], ``batch_size`` at a time."""
        return apply_in_batches(class_probabilities, self.model, self.params, x, batch_size=batch_size)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The most probable class ``[N]`` of each image."""
        return np.argmax(self.predict_proba(x), axis=-1)


def train_classifier(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    key: jax.Array,
    *,
    hidden: Sequence[int] = (256,),
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    cache: bool = True,
) -> TrainedClassifier:
    """Trains :class:`MLPClassifier` on ``(x_train, y_train)`` and measures its accuracy on ``(x_test, y_test)``.

    Args:
      x_train, x_test: ``[N, H, W, C]`` images in [0, 1].
      y_train, y_test: ``[N]`` int labels in ``[0, num_classes)``.
      key: the one key of the run (init and shuffling are split from it).
      cache: keep the trained params and accuracy in the user cache (:func:`vae_jax.data.caches.cached_by_inputs`,
        keyed by the four arrays, the key, the settings and the library versions and backend): a later call
        with the same inputs loads them instead of training again.
    """
    model = MLPClassifier(num_classes=num_classes, hidden=tuple(hidden))
    fit = dict(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    if not cache:
        return _train(model, x_train, y_train, x_test, y_test, key, **fit)
    settings = fit | {"hidden": list(hidden), "num_classes": num_classes, "key": jax.random.key_data(key).tolist()}

    def build() -> tuple:
        trained = _train(model, x_train, y_train, x_test, y_test, key, **fit)
        return (*jax.tree_util.tree_leaves(jax.device_get(trained.params)), np.float64(trained.test_accuracy))

    *leaves, accuracy = caches.cached_by_inputs("classifier-v1", build, (x_train, y_train, x_test, y_test), **settings)
    template = jax.eval_shape(lambda k: _init_params(model, k, tuple(x_train.shape[1:])), key)
    params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
    return TrainedClassifier(model, params, float(accuracy))


def _train(model, x_train, y_train, x_test, y_test, key, *, epochs, batch_size, learning_rate) -> TrainedClassifier:
    """:func:`train_classifier` without the cache."""
    init_key, shuffle_key = jax.random.split(key)
    params = _init_params(model, init_key, tuple(x_train.shape[1:]))
    optimizer = optax.adam(learning_rate)
    epoch = _make_epoch(
        model, optimizer, jnp.asarray(x_train, jnp.float32), jnp.asarray(y_train, jnp.int32), batch_size
    )
    carry = (params, optimizer.init(params))
    for e in range(epochs):
        carry, _ = epoch(carry, jax.random.fold_in(shuffle_key, e))
    trained = TrainedClassifier(model, carry[0], float("nan"))
    trained.test_accuracy = float(np.mean(trained.predict(x_test) == np.asarray(y_test)))
    return trained


@functools.partial(compiling.jit_run_once, static_argnums=(0, 2))
def _init_params(model: MLPClassifier, key: jax.Array, image_shape: tuple) -> dict:
    """``model``'s initial params, compiled as one program (the same bits as flax's ``init`` op by op)."""
    return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]


def _make_epoch(model: MLPClassifier, optimizer, x_train: jax.Array, y_train: jax.Array, batch_size: int):
    """A jitted epoch ``((params, opt_state), key) -> (carry, [steps] losses)``: one shuffled pass in minibatches.

    Each step is an ``optimizer`` update on the mean softmax cross-entropy of a minibatch of
    ``min(batch_size, N)`` examples; the last ``N mod batch_size`` examples of the permutation are left out.
    """
    batch_size = min(batch_size, x_train.shape[0])
    steps = x_train.shape[0] // batch_size

    def loss_fn(params, xb, yb):
        logits = model.apply({"params": params}, xb)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

    @jax.jit
    def epoch(carry, epoch_key):
        order = jax.random.permutation(epoch_key, x_train.shape[0])[: steps * batch_size].reshape(steps, batch_size)

        def step(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, x_train[idx], y_train[idx])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        return jax.lax.scan(step, carry, order)

    return epoch


def requested_class_fraction(
    classifier: TrainedClassifier, images: np.ndarray, requested: np.ndarray, num_classes: int
) -> dict:
    """How often ``classifier`` assigns generated ``images`` to the class they were generated for.

    Returns ``overall`` (the fraction of all images predicted as the requested class), ``per_class`` ``[K]``
    (the same per requested class) and ``mean_probability`` (the mean probability of the requested class).
    """
    probs = classifier.predict_proba(images)  # [N, K]
    requested = np.asarray(requested)
    hits = np.argmax(probs, axis=-1) == requested
    return {
        "overall": float(np.mean(hits)),
        "per_class": [
            float(np.mean(hits[requested == c])) if np.any(requested == c) else None for c in range(num_classes)
        ],
        "mean_probability": float(np.mean(probs[np.arange(len(requested)), requested])),
    }
