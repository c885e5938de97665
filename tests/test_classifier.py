"""The digit classifier's batched probabilities against a NumPy forward pass of the same MLP."""

import jax
import numpy as np
import pytest

from vae_jax import classifier as classifier_lib


def numpy_probabilities(params, x: np.ndarray) -> np.ndarray:
    """The MLP written out in NumPy (float64): ReLU hidden layers, then a softmax over the logits."""
    h = x.reshape(len(x), -1).astype(np.float64)
    for name in sorted((n for n in params if n.startswith("Dense_")), key=lambda n: int(n.split("_")[1])):
        h = np.maximum(h @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"]), 0.0)
    logits = h @ np.asarray(params["logits"]["kernel"]) + np.asarray(params["logits"]["bias"])
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_predict_proba_in_uneven_batches_is_the_numpy_forward_pass():
    model = classifier_lib.MLPClassifier(num_classes=10, hidden=(16, 8))
    x = np.random.default_rng(0).uniform(size=(23, 6, 6, 1)).astype(np.float32)
    params = model.init(jax.random.key(0), x[:1])["params"]
    judge = classifier_lib.TrainedClassifier(model, params, test_accuracy=float("nan"))
    want = numpy_probabilities(params, x)
    for batch_size in (1000, 7):  # one batch; three of 7 and a last one of 2 padded to 7
        probs = judge.predict_proba(x, batch_size=batch_size)
        assert probs.shape == (23, 10)
        np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(judge.predict(x), want.argmax(-1))


def test_the_compiled_initial_params_are_flaxs_eager_init_to_the_bit():
    model = classifier_lib.MLPClassifier(num_classes=10, hidden=(16, 8))
    key = jax.random.key(5)
    eager = model.init(key, np.zeros((1, 6, 6, 1), np.float32))["params"]
    compiled = classifier_lib._init_params(model, key, (6, 6, 1))
    assert jax.tree_util.tree_structure(compiled) == jax.tree_util.tree_structure(eager)
    for got, want in zip(jax.tree_util.tree_leaves(compiled), jax.tree_util.tree_leaves(eager), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_cached_classifier_is_the_one_trained_afresh_and_any_changed_input_trains_anew(monkeypatch):
    rng = np.random.default_rng(1)
    x, y = rng.uniform(size=(40, 6, 6, 1)).astype(np.float32), rng.integers(0, 3, 40)
    args = (x[:30], y[:30], x[30:], y[30:], 3, jax.random.key(2))
    kwargs = dict(hidden=(8,), epochs=2, batch_size=8)
    fresh = classifier_lib.train_classifier(*args, **kwargs, cache=False)
    first = classifier_lib.train_classifier(*args, **kwargs)  # trained, then kept in the (test's) user cache
    monkeypatch.setattr(classifier_lib, "_train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    loaded = classifier_lib.train_classifier(*args, **kwargs)
    for judge in (first, loaded):
        assert judge.test_accuracy == fresh.test_accuracy
        for got, want in zip(
            jax.tree_util.tree_leaves(judge.params), jax.tree_util.tree_leaves(fresh.params), strict=True
        ):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(judge.predict_proba(x), fresh.predict_proba(x))
    changed = (x[:30], np.roll(y[:30], 1), *args[2:])
    for other_args, other_kwargs in (
        (changed, kwargs),
        (args, {**kwargs, "epochs": 3}),
        (args[:-1] + (jax.random.key(3),), kwargs),
    ):
        with pytest.raises(AssertionError, match="trained"):
            classifier_lib.train_classifier(*other_args, **other_kwargs)
