"""The gated PixelCNN prior over code grids: masks, causality, likelihood, sampler, training through the driver."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import data as data_lib
from vae_jax import runner
from vae_jax.errors import ConfigError
from vae_jax.models.pixelcnn import MaskedConv, PixelCNN, causal_mask, init_params, mask_taps
from vae_jax.tasks import prior

NUM_CODES = 3
NUM_CLASSES = 4


@pytest.fixture(scope="module")
def unconditional():
    """A tiny untrained prior (k = 3, 3 layers: reach 3 rows up, ±3 columns, 3 left); its params fit any grid size."""
    model = PixelCNN(num_codes=NUM_CODES, features=8, num_layers=3, kernel_size=3)
    return model, init_params(model, jax.random.key(0), (4, 4))


@pytest.fixture(scope="module")
def conditional():
    """A tiny untrained class-conditional prior (k = 5, 2 layers: reach 4 rows up, ±4 columns, 4 left)."""
    model = PixelCNN(num_codes=NUM_CODES, features=8, num_layers=2, kernel_size=5, num_classes=NUM_CLASSES)
    return model, init_params(model, jax.random.key(1), (4, 4))


def numpy_grid_nll(logits, codes):
    """-sum over the grid of log softmax(logits)[code], in float64 NumPy."""
    logits = np.asarray(logits, np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, np.asarray(codes)[..., None], axis=-1)[..., 0]
    return -picked.sum(axis=(1, 2))


def test_causal_masks_follow_their_definition():
    # vertical: rows strictly above the centre (A) or up to the centre row (B), all columns
    np.testing.assert_array_equal(causal_mask(3, "vertical", "A"), [[1, 1, 1], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(causal_mask(3, "vertical", "B"), [[1, 1, 1], [1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(causal_mask(5, "vertical", "A")[:, 0], [1, 1, 0, 0, 0])
    # horizontal: columns strictly left of the centre (A) or up to it (B)
    np.testing.assert_array_equal(causal_mask(3, "horizontal", "A"), [[1, 0, 0]])
    np.testing.assert_array_equal(causal_mask(5, "horizontal", "B"), [[1, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match="kernel_size"):
        causal_mask(4, "vertical", "A")
    with pytest.raises(ValueError, match="mask_type"):
        causal_mask(3, "vertical", "C")


@pytest.mark.parametrize("prior_fixture", ["unconditional", "conditional"])
def test_logits_depend_on_exactly_the_earlier_positions(prior_fixture, request):
    """d logits(i) / d embedding(j) is exactly 0 for j >= i in raster order and non-zero for every j < i.

    Both fixtures' receptive fields span the whole 4×4 grid, so a non-zero
    entry for *every* earlier position means no blind spot (the classic
    PixelCNN misses positions above and to the right).
    """
    height = width = 4
    model, params = request.getfixturevalue(prior_fixture)
    labels = jnp.array([2]) if model.num_classes else None
    embedded = jax.random.normal(jax.random.key(1), (1, height, width, model.features))
    code_weights = jax.random.normal(jax.random.key(2), (model.num_codes,))

    def position_outputs(e):  # [H·W]: a random mix of each position's K logits (0 only if all K vanish)
        logits = model.apply({"params": params}, e, labels, method=PixelCNN.logits_from_embeddings)
        return (logits[0] @ code_weights).reshape(-1)

    jacobian = np.asarray(jax.jit(jax.jacrev(position_outputs))(embedded))  # [H·W, 1, H, W, F]
    dependence = np.abs(jacobian).sum(axis=-1).reshape(height * width, height * width)  # [out, in]

    earlier = np.tril(np.ones_like(dependence, bool), k=-1)
    assert np.all(dependence[~earlier] == 0.0)  # exactly zero: the position itself and everything after
    assert np.all(dependence[earlier] > 0.0)
    above_right = (1 * width + 2, 0 * width + 3)  # position (1, 2) reads (0, 3)
    assert dependence[above_right] > 0.0


def test_autoregressive_likelihood_is_normalised_and_sampler_draws_from_it(unconditional):
    """Enumerating all K^(H·W) grids: sum_c exp(-nll(c)) = 1, and sample frequencies match exp(-nll)."""
    grid_shape, num_codes = (2, 2), NUM_CODES
    model, params = unconditional
    params = jax.tree_util.tree_map(lambda a: 3.0 * a, params)  # a peaked, far-from-uniform distribution
    all_grids = np.array(list(itertools.product(range(num_codes), repeat=4)), np.int32).reshape(-1, *grid_shape)
    probs = np.exp(-prior.code_nll(model, params, all_grids).astype(np.float64))  # [81]
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)

    n = 20_000
    samples = prior.sample_codes(model, params, jax.random.key(7), n, grid_shape)
    index = (samples.reshape(n, 4) * num_codes ** np.arange(3, -1, -1)).sum(-1)  # same order as product()
    freqs = np.bincount(index, minlength=num_codes**4) / n
    total_variation = 0.5 * np.abs(freqs - probs).sum()
    assert total_variation < 0.03, total_variation

    # temperature T: the first position (which sees nothing) is drawn from softmax(logits / T)
    temperature = 0.5
    first_logits = np.asarray(model.apply({"params": params}, jnp.zeros((1, *grid_shape), jnp.int32)))[0, 0, 0]
    expected = np.exp(first_logits / temperature - np.max(first_logits / temperature))
    expected /= expected.sum()
    cold = prior.sample_codes(model, params, jax.random.key(8), n, grid_shape, temperature=temperature)
    np.testing.assert_allclose(np.bincount(cold[:, 0, 0], minlength=num_codes) / n, expected, atol=0.015)


@pytest.mark.parametrize("prior_fixture", ["unconditional", "conditional"])
def test_code_nll_is_the_numpy_cross_entropy_of_the_logits(prior_fixture, request):
    grid_shape, num_codes = (4, 3), NUM_CODES
    model, params = request.getfixturevalue(prior_fixture)
    num_classes = model.num_classes
    rng = np.random.default_rng(0)
    codes = rng.integers(0, num_codes, (7, *grid_shape)).astype(np.int32)
    labels = rng.integers(0, num_classes, 7) if num_classes else None
    logits = model.apply({"params": params}, jnp.asarray(codes), None if labels is None else jnp.asarray(labels))
    expected = numpy_grid_nll(logits, codes)

    nll = prior.code_nll(model, params, codes, labels, batch_size=3)  # uneven batches on purpose
    np.testing.assert_allclose(nll, expected, rtol=1e-5)
    np.testing.assert_allclose(prior.code_bits_per_dim(nll, grid_shape), expected / (12 * math.log(2)), rtol=1e-5)

    # the training task's per-example test metrics are the same numbers
    config = prior.PriorConfig(
        channels=8, layers=model.num_layers, kernel_size=model.kernel_size, conditional=bool(num_classes)
    )
    task_model, task = prior.prior_task(config, grid_shape, num_codes, num_classes=num_classes or None)
    assert task_model == model
    batch = {"x": jnp.asarray(codes[..., None])}
    if num_classes:
        batch["y"] = jnp.asarray(labels)
    metrics = jax.jit(task.eval_fn)(params, batch, jax.random.key(0))
    np.testing.assert_allclose(metrics["nll"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["bits_per_dim"], expected / (12 * math.log(2)), rtol=1e-5)
    loss, train_metrics = task.loss_fn(params, batch, jax.random.key(0), 0)
    np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)


def test_class_labels_change_the_conditional_prior(conditional):
    model, params = conditional
    codes = jnp.zeros((2, 4, 4), jnp.int32)
    logits = model.apply({"params": params}, codes, jnp.array([0, 2]))
    assert not np.allclose(logits[0], logits[1])
    # p(c | y) is a distribution over all 3^4 grids of a 2×2 grid for each class y
    all_grids = np.array(list(itertools.product(range(NUM_CODES), repeat=4)), np.int32).reshape(-1, 2, 2)
    for label in (0, 3):
        labels = np.full(len(all_grids), label)
        np.testing.assert_allclose(np.exp(-prior.code_nll(model, params, all_grids, labels)).sum(), 1.0, rtol=1e-5)
    labels = np.array([0, 1, 2, 3])
    samples = prior.sample_codes(model, params, jax.random.key(0), 4, (2, 2), labels=labels)
    np.testing.assert_array_equal(
        samples, prior.sample_codes(model, params, jax.random.key(0), 4, (2, 2), labels=labels)
    )
    assert samples.shape == (4, 2, 2) and samples.min() >= 0 and samples.max() < NUM_CODES
    with pytest.raises(ValueError, match="labels"):
        prior.sample_codes(model, params, jax.random.key(0), 2, (4, 4))


def test_sampler_is_deterministic_per_key_in_range_and_compiled_once(unconditional):
    grid_shape, num_codes = (3, 4), NUM_CODES
    model, params = unconditional
    first = prior.sample_codes(model, params, jax.random.key(0), 16, grid_shape)
    traces = prior._sample_codes._cache_size()
    again = prior.sample_codes(model, params, jax.random.key(0), 16, grid_shape)
    other = prior.sample_codes(model, params, jax.random.key(1), 16, grid_shape, temperature=0.7)
    assert prior._sample_codes._cache_size() == traces  # a new key or temperature does not recompile
    assert first.shape == (16, *grid_shape) and first.dtype == np.int32
    assert first.min() >= 0 and first.max() < num_codes
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    with pytest.raises(ValueError, match="temperature"):
        prior.sample_codes(model, params, jax.random.key(0), 4, grid_shape, temperature=0.0)


def repeated_row_grids(rng, n, grid_shape, num_codes):
    """Grids whose every row repeats one code drawn uniformly: entropy log2(K) bits per row."""
    height, width = grid_shape
    return np.repeat(rng.integers(0, num_codes, (n, height, 1)), width, axis=2).astype(np.int32)


def test_prior_trained_through_the_driver_learns_repeated_rows(tmp_path):
    """Rows that repeat one code: optimum log2(K)/W = 0.5 bits/dim, uniform log2(K) = 2 bits/dim."""
    grid_shape, num_codes = (4, 4), 4
    rng = np.random.default_rng(0)
    dataset = prior.codes_dataset(
        repeated_row_grids(rng, 512, grid_shape, num_codes),
        repeated_row_grids(rng, 128, grid_shape, num_codes),
        source="repeated rows",
    )
    config = prior.PriorConfig(
        workdir=str(tmp_path),
        epochs=5,
        batch_size=32,
        learning_rate=3e-3,
        channels=16,
        layers=3,
        kernel_size=3,
        progress=False,
    )
    config.validate()
    model, task = prior.prior_task(config, grid_shape, num_codes)
    result = runner.train(config, task, dataset)
    print("test bits/dim by epoch:", [round(line["test_bits_per_dim"], 3) for line in result.history])

    optimum, uniform = math.log2(num_codes) / grid_shape[1], math.log2(num_codes)
    test_bits = result.summary["test"]["bits_per_dim"]["mean"]
    print(f"test bits/dim {test_bits:.3f} (optimum {optimum:.3f}, uniform {uniform:.3f})")
    assert test_bits < optimum + 0.2
    held_out = prior.code_bits_per_dim(prior.code_nll(model, result.params(), dataset.x_test), grid_shape)
    np.testing.assert_allclose(held_out.mean(), test_bits, rtol=1e-4)

    samples = prior.sample_codes(model, result.params(), jax.random.key(0), 200, grid_shape)
    constant_rows = np.mean(np.all(samples == samples[:, :, :1], axis=-1))
    print(f"rows of the samples that repeat one code: {constant_rows:.3f}")
    assert constant_rows > 0.9
    # every code starts rows about equally often: the prior did not collapse onto a few codes
    row_codes = np.bincount(samples[:, :, 0].ravel(), minlength=num_codes) / samples[:, :, 0].size
    assert row_codes.min() > 0.15


def test_config_and_data_errors_name_the_argument(unconditional):
    with pytest.raises(ConfigError, match="--kernel-size"):
        prior.PriorConfig(kernel_size=4).validate()
    with pytest.raises(ConfigError, match="--binarize"):
        prior.PriorConfig(binarize="dynamic").validate()
    with pytest.raises(ValueError, match="num_classes"):
        prior.prior_task(prior.PriorConfig(conditional=True), (4, 4), 8)
    codes = np.zeros((5, 4, 4), np.int32)
    with pytest.raises(data_lib.DataError, match="test_codes"):
        prior.codes_dataset(codes, np.zeros((5, 3, 4), np.int32), source="x")
    with pytest.raises(data_lib.DataError, match="train_codes"):
        prior.codes_dataset(codes.astype(np.float32), codes, source="x")
    with pytest.raises(data_lib.DataError, match="train_labels"):
        prior.codes_dataset(codes, codes, source="x", train_labels=np.zeros(4), test_labels=np.zeros(5))
    dataset = prior.codes_dataset(codes[..., None], codes, source="x")
    assert dataset.train_pixels.shape == (5, 4, 4, 1) and dataset.train_pixels.dtype == np.int32
    model, params = unconditional
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        prior.code_nll(model, params, codes + 3)


@pytest.mark.parametrize("stack,mask_type", itertools.product(["vertical", "horizontal"], ["A", "B"]))
def test_masked_conv_equals_the_lax_convolution_with_the_full_masked_kernel(stack, mask_type):
    mask = causal_mask(5, stack, mask_type)
    taps = mask_taps(mask)
    assert len(taps) == mask.sum()
    layer = MaskedConv(features=3, mask=mask)
    x = jax.random.normal(jax.random.key(0), (2, 6, 7, 4))
    params = layer.init(jax.random.key(1), x)["params"]
    assert params["kernel"].shape == (len(taps), 4, 3)  # weights for the unmasked taps only
    full = np.zeros((*mask.shape, 4, 3), np.float32)  # the k×k (or 1×k) HWIO kernel, zero where masked
    for (dr, dc), weights in zip(taps, np.asarray(params["kernel"]), strict=True):
        full[mask.shape[0] // 2 + dr, mask.shape[1] // 2 + dc] = weights
    expected = jax.lax.conv_general_dilated(x, full, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(layer.apply({"params": params}, x), expected + params["bias"], atol=1e-5)
