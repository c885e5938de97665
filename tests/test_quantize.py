"""Tests of vae_jax.quantize against NumPy brute force, hand computations and jax.grad."""

import doctest

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import quantize


def _random(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- nearest codes --------------------------------------------------------------------


@pytest.mark.parametrize("lead", [(3, 7, 7), (2, 32, 32), (5,)])
def test_indices_equal_numpy_brute_force(lead):
    z_e = _random(0, *lead, 8)
    codebook = _random(1, 20, 8)
    out = jax.jit(quantize.vector_quantize)(jnp.asarray(z_e), jnp.asarray(codebook))
    diff = z_e[..., None, :] - codebook  # [..., K, D]
    expected_d2 = np.sum(diff**2, axis=-1)
    np.testing.assert_array_equal(np.asarray(out.indices), np.argmin(expected_d2, axis=-1))
    np.testing.assert_allclose(np.asarray(out.distances), expected_d2, rtol=1e-4, atol=1e-4)
    chex.assert_shape(out.z_q, (*lead, 8))
    np.testing.assert_allclose(np.asarray(out.z_q), codebook[np.argmin(expected_d2, axis=-1)], atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.codes), np.asarray(out.z_q), atol=1e-6)  # z_e + (e - z_e) rounds


def test_cosine_codes_pick_the_largest_cosine_similarity():
    z_e = _random(2, 4, 5, 6)
    codebook = _random(3, 12, 6) * np.linspace(0.1, 10.0, 12)[:, None]  # norms must not matter
    out = quantize.vector_quantize(jnp.asarray(z_e), jnp.asarray(codebook), cosine=True)
    cos = (z_e / np.linalg.norm(z_e, axis=-1, keepdims=True)) @ (
        codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)
    ).T
    np.testing.assert_array_equal(np.asarray(out.indices), np.argmax(cos, axis=-1))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out.z_q), axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.distances), 2.0 - 2.0 * cos, atol=1e-5)


def test_codebook_of_wrong_dimension_is_rejected():
    with pytest.raises(ValueError, match="codebook must be"):
        quantize.vector_quantize(jnp.zeros((2, 4)), jnp.zeros((3, 5)))


# --- gradients of the three terms -----------------------------------------------------


def _setup():
    z_e = jnp.asarray(_random(4, 2, 3, 3, 4))
    codebook = jnp.asarray(_random(5, 16, 4))
    return z_e, codebook


def test_reconstruction_gradient_passes_straight_through_to_the_encoder():
    z_e, codebook = _setup()
    weights = jnp.asarray(_random(6, 2, 3, 3, 4))

    def decoder_loss(z):  # a nonlinear stand-in for -log p(x | z_q)
        return jnp.sum(jnp.sin(weights * z) ** 2)

    def through_quantizer(z, cb):
        return decoder_loss(quantize.vector_quantize(z, cb).z_q)

    grad_z, grad_cb = jax.grad(through_quantizer, argnums=(0, 1))(z_e, codebook)
    codes = quantize.vector_quantize(z_e, codebook).codes
    # identity Jacobian: the encoder gets exactly the decoder's gradient at z_q
    chex.assert_trees_all_close(grad_z, jax.grad(decoder_loss)(codes), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(grad_cb), 0.0)


def test_codebook_loss_trains_only_the_chosen_codes():
    z_e, codebook = _setup()

    def loss(z, cb):
        q = quantize.vector_quantize(z, cb)
        return jnp.sum(quantize.vq_codebook_loss(q))

    grad_z, grad_cb = jax.grad(loss, argnums=(0, 1))(z_e, codebook)
    np.testing.assert_array_equal(np.asarray(grad_z), 0.0)
    idx = np.asarray(quantize.vector_quantize(z_e, codebook).indices).reshape(-1)
    flat = np.asarray(z_e).reshape(-1, 4)
    expected = np.zeros((16, 4), np.float32)
    for n, k in enumerate(idx):  # d/de_k sum ||z_n - e_k||^2 = 2 sum_n (e_k - z_n)
        expected[k] += 2.0 * (np.asarray(codebook)[k] - flat[n])
    np.testing.assert_allclose(np.asarray(grad_cb), expected, rtol=1e-5, atol=1e-5)
    unused = np.setdiff1d(np.arange(16), idx)
    assert len(unused) > 0
    np.testing.assert_array_equal(np.asarray(grad_cb)[unused], 0.0)
    assert np.all(np.abs(np.asarray(grad_cb)[np.unique(idx)]).sum(axis=1) > 0)


def test_commitment_loss_gives_no_gradient_to_the_codebook():
    z_e, codebook = _setup()

    def loss(z, cb):
        q = quantize.vector_quantize(z, cb)
        return jnp.sum(quantize.vq_commitment_loss(q))

    grad_z, grad_cb = jax.grad(loss, argnums=(0, 1))(z_e, codebook)
    np.testing.assert_array_equal(np.asarray(grad_cb), 0.0)
    codes = quantize.vector_quantize(z_e, codebook).codes
    np.testing.assert_allclose(np.asarray(grad_z), 2.0 * np.asarray(z_e - codes), rtol=1e-5, atol=1e-6)


def test_vq_losses_are_per_example_sums_over_the_grid():
    z_e, codebook = _setup()
    q = quantize.vector_quantize(z_e, codebook)
    expected = np.sum((np.asarray(z_e) - np.asarray(q.codes)) ** 2, axis=(1, 2, 3))
    for fn in (quantize.vq_codebook_loss, quantize.vq_commitment_loss):
        values = fn(q)
        chex.assert_shape(values, (2,))
        np.testing.assert_allclose(np.asarray(values), expected, rtol=1e-5)


def test_vq_losses_of_a_sequence_need_its_event_ndim():
    z_e, codebook = jnp.asarray(_random(20, 3, 5, 4)), jnp.asarray(_random(21, 6, 4))  # [B, T, D]
    q = quantize.vector_quantize(z_e, codebook)
    for fn in (quantize.vq_codebook_loss, quantize.vq_commitment_loss):
        with pytest.raises(ValueError, match=r"event_ndim=3 needs rank >= 4.*2 for \[B, T, D\]"):
            fn(q)  # the default event_ndim=3 would sum the whole batch into one number
        expected = np.sum((np.asarray(z_e) - np.asarray(codebook)[np.asarray(q.indices)]) ** 2, axis=(1, 2))
        np.testing.assert_allclose(np.asarray(fn(q, event_ndim=2)), expected, rtol=1e-5)


def test_vq_losses_take_the_quantized_so_the_codebook_always_gets_its_gradient():
    z_e, codebook = _setup()
    q = quantize.vector_quantize(z_e, codebook)
    for fn in (quantize.vq_codebook_loss, quantize.vq_commitment_loss):
        with pytest.raises(TypeError, match="takes the Quantized that vector_quantize returns"):
            fn(q.z_e, q.z_q)  # z_q instead of codes used to give the codebook no gradient, silently

    idx = np.argmin(((np.asarray(z_e)[..., None, :] - np.asarray(codebook)) ** 2).sum(-1), axis=-1)  # NumPy

    def by_hand(cb):  # sum_n ||sg[z_n] - e_{k(n)}||^2 with the NumPy nearest codes
        return jnp.sum(jnp.square(z_e - cb[idx]))

    grad = jax.grad(lambda cb: jnp.sum(quantize.vq_codebook_loss(quantize.vector_quantize(z_e, cb))))(codebook)
    chex.assert_trees_all_close(grad, jax.grad(by_hand)(codebook), atol=1e-5)
    assert np.abs(np.asarray(grad)).sum() > 0


def test_the_pairing_example_in_the_docstring_runs():
    finder = doctest.DocTestFinder()
    (test,) = finder.find(quantize.vq_codebook_loss, "vq_codebook_loss", globs={})
    result = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE).run(test)
    assert result.attempted >= 5 and result.failed == 0


# --- usage statistics -----------------------------------------------------------------


def test_perplexity_is_k_for_uniform_and_one_for_a_single_code():
    k = 37
    np.testing.assert_allclose(float(quantize.perplexity(jnp.full((k,), 5.0))), k, rtol=1e-5)
    one = jnp.zeros((k,)).at[3].set(100.0)
    np.testing.assert_allclose(float(quantize.perplexity(one)), 1.0, rtol=1e-6)
    counts = np.random.default_rng(0).integers(0, 9, size=k).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(
        float(quantize.perplexity(jnp.asarray(counts))), np.exp(-np.sum(p * np.log(p))), rtol=1e-5
    )


def test_counts_accumulate_to_the_whole_set_histogram():
    idx = np.random.default_rng(1).integers(0, 10, size=(6, 7, 7))
    total = sum(quantize.code_counts(jnp.asarray(idx[i : i + 2]), 12) for i in range(0, 6, 2))
    np.testing.assert_array_equal(np.asarray(total), np.bincount(idx.reshape(-1), minlength=12))
    assert int(quantize.codes_used(total)) == len(np.unique(idx))
    weighted = quantize.code_counts(jnp.asarray(idx[:2]), 12, weights=jnp.asarray([1.0, 0.0])[:, None, None])
    np.testing.assert_array_equal(np.asarray(weighted), np.bincount(idx[0].reshape(-1), minlength=12))


# --- EMA codebook ---------------------------------------------------------------------


def _numpy_ema(steps, codebook, decay, eps):
    """The EMA update written out by hand for a sequence of (z [N, D], idx [N])."""
    k, d = codebook.shape
    size, total_sum, codebook = np.zeros(k), np.zeros((k, d)), codebook.astype(np.float64).copy()
    for t, (z, idx) in enumerate(steps, start=1):
        n_k = np.bincount(idx, minlength=k).astype(np.float64)
        s_k = np.zeros((k, d))
        for zi, ki in zip(z, idx, strict=True):
            s_k[ki] += zi
        size = decay * size + (1 - decay) * n_k
        total_sum = decay * total_sum + (1 - decay) * s_k
        size_hat, sum_hat = size / (1 - decay**t), total_sum / (1 - decay**t)
        n = size_hat.sum()
        smoothed = (size_hat + eps) / (n + k * eps) * n
        codebook[n_k > 0] = (sum_hat / smoothed[:, None])[n_k > 0]
    return codebook


def test_ema_matches_a_hand_computation_and_moves_only_used_codes():
    k, d, decay, eps = 6, 3, 0.9, 1e-5
    codebook = _random(7, k, d)
    z1, idx1 = _random(8, 5, d), np.array([0, 0, 2, 3, 0])
    z2, idx2 = _random(9, 4, d), np.array([2, 2, 3, 0])
    state = quantize.ema_init(k, d)
    cb1, state = jax.jit(quantize.ema_update, static_argnums=(4, 5))(state, jnp.asarray(codebook), z1, idx1, decay, eps)
    # one step, debiased: the used codes become their cluster means (up to the smoothing)
    np.testing.assert_allclose(np.asarray(cb1)[0], z1[[0, 1, 4]].mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(cb1), _numpy_ema([(z1, idx1)], codebook, decay, eps), rtol=1e-5)
    unused = [1, 4, 5]
    np.testing.assert_array_equal(np.asarray(cb1)[unused], codebook[unused])
    cb2, state = quantize.ema_update(state, cb1, jnp.asarray(z2), jnp.asarray(idx2), decay, eps)
    np.testing.assert_allclose(
        np.asarray(cb2), _numpy_ema([(z1, idx1), (z2, idx2)], codebook, decay, eps), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(cb2)[unused], codebook[unused])
    assert int(state.count) == 2


def test_ema_reset_reads_as_weight_vectors_at_the_new_code():
    k, d, decay = 4, 2, 0.99
    state = quantize.ema_init(k, d)
    codebook = jnp.asarray(_random(10, k, d))
    _, state = quantize.ema_update(state, codebook, codebook[:2], jnp.asarray([0, 1]), decay)
    _, state = quantize.ema_update(state, codebook, codebook[:2], jnp.asarray([0, 1]), decay)
    reset = jnp.asarray([False, False, True, False])
    new = quantize.ema_reset_codes(state, codebook, reset, decay, weight=3.0)
    debias = 1 - decay**2
    np.testing.assert_allclose(float(new.cluster_size[2]) / debias, 3.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new.code_sum[2]) / debias, 3.0 * np.asarray(codebook[2]), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(new.cluster_size)[[0, 1, 3]], np.asarray(state.cluster_size)[[0, 1, 3]])


def _haiku_vector_quantizer_ema(steps, embeddings, decay, eps):
    """Haiku's VectorQuantizerEMA training updates in NumPy: its [D, K] layout, one debiased
    ExponentialMovingAverage (hidden, counter) each for the cluster sizes and dw."""
    d, k = embeddings.shape
    ema = {"size": [np.zeros(k), 0], "dw": [np.zeros((d, k)), 0]}

    def moving_average(name, value):
        hidden, counter = ema[name]
        counter += 1
        hidden = hidden * decay + value * (1 - decay)
        ema[name] = [hidden, counter]
        return hidden / (1.0 - decay**counter)

    for flat_inputs, idx in steps:
        encodings = np.eye(k)[idx]  # [N, K]
        cluster_size = moving_average("size", encodings.sum(0))
        dw = moving_average("dw", flat_inputs.T @ encodings)  # [D, K]
        n = cluster_size.sum()
        cluster_size = (cluster_size + eps) / (n + k * eps) * n
        embeddings = dw / cluster_size.reshape(1, -1)
    return embeddings


def test_sonnet_rule_matches_haikus_vector_quantizer_ema():
    k, d, decay, eps = 6, 3, 0.9, 1e-5
    codebook = _random(22, k, d)
    steps = [
        (_random(23, 5, d), np.array([0, 0, 2, 3, 0])),
        (_random(24, 4, d), np.array([2, 2, 5, 0])),
        (_random(25, 3, d), np.array([3, 3, 3])),
    ]  # code 1 and 4 never used, 5 used once
    state, cb = quantize.ema_init(k, d), jnp.asarray(codebook)
    update = jax.jit(quantize.ema_update, static_argnames=("decay", "epsilon", "rule"))
    for t, (z, idx) in enumerate(steps, start=1):
        cb, state = update(state, cb, jnp.asarray(z), jnp.asarray(idx), decay=decay, epsilon=eps, rule="sonnet")
        expected = _haiku_vector_quantizer_ema(steps[:t], codebook.T, decay, eps).T
        np.testing.assert_allclose(np.asarray(cb), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(cb)[[1, 4]], 0.0)  # never used: 0, where "keep" keeps them
    kept, _ = quantize.ema_update(
        quantize.ema_init(k, d), jnp.asarray(codebook), jnp.asarray(steps[0][0]), jnp.asarray(steps[0][1]), decay, eps
    )
    np.testing.assert_array_equal(np.asarray(kept)[[1, 4]], codebook[[1, 4]])
    with pytest.raises(ValueError, match="rule must be one of keep, sonnet"):
        quantize.ema_update(state, cb, jnp.asarray(z), jnp.asarray(idx), rule="haiku")


# --- dead-code restart ----------------------------------------------------------------


def test_steps_unused_counters():
    steps = quantize.update_steps_unused(jnp.asarray([0, 3, 5, 1]), jnp.asarray([2.0, 0.0, 1.0, 0.0]))
    np.testing.assert_array_equal(np.asarray(steps), [0, 4, 0, 2])


def test_dead_code_restart_reseeds_exactly_the_stale_codes_deterministically():
    codebook = jnp.asarray(_random(11, 8, 3))
    steps_unused = jnp.asarray([0, 10, 3, 4, 9, 0, 100, 3])
    z_e = jnp.asarray(_random(12, 2, 5, 5, 3))
    key = jax.random.key(0)
    new, counters, dead = quantize.restart_dead_codes(key, codebook, steps_unused, z_e, 4)
    expected_dead = np.array([False, True, False, True, True, False, True, False])
    np.testing.assert_array_equal(np.asarray(dead), expected_dead)
    np.testing.assert_array_equal(np.asarray(new)[~expected_dead], np.asarray(codebook)[~expected_dead])
    flat = np.asarray(z_e).reshape(-1, 3)
    for row in np.asarray(new)[expected_dead]:  # every restarted code is one of the encoder outputs
        assert np.min(np.abs(flat - row).sum(axis=1)) == 0.0
    np.testing.assert_array_equal(np.asarray(counters), np.where(expected_dead, 0, np.asarray(steps_unused)))
    again, _, _ = quantize.restart_dead_codes(key, codebook, steps_unused, z_e, 4)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(new))
    other, _, _ = quantize.restart_dead_codes(jax.random.key(1), codebook, steps_unused, z_e, 4)
    assert not np.array_equal(np.asarray(other), np.asarray(new))


# --- k-means --------------------------------------------------------------------------


def test_lloyd_step_matches_numpy():
    points, centres = _random(13, 50, 2), _random(14, 5, 2)
    centres[4] = 100.0  # an empty cluster keeps its centre
    assign = np.argmin(((points[:, None] - centres) ** 2).sum(-1), axis=1)
    expected = np.stack([points[assign == k].mean(0) if np.any(assign == k) else centres[k] for k in range(5)])
    np.testing.assert_allclose(
        np.asarray(quantize.lloyd_step(jnp.asarray(points), jnp.asarray(centres))), expected, rtol=1e-5, atol=1e-6
    )


def test_kmeans_finds_well_separated_clusters():
    rng = np.random.default_rng(15)
    true_centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = np.concatenate([c + 0.1 * rng.normal(size=(40, 2)) for c in true_centres]).astype(np.float32)
    centres = np.asarray(quantize.kmeans(jax.random.key(3), jnp.asarray(points), 4, iterations=5))
    order = np.lexsort(np.round(centres).T)  # by y, then x: the order of true_centres
    np.testing.assert_allclose(centres[order], true_centres, atol=0.1)
    spherical = np.asarray(quantize.kmeans(jax.random.key(3), jnp.asarray(points[40:]), 3, cosine=True))
    np.testing.assert_allclose(np.linalg.norm(spherical, axis=1), 1.0, rtol=1e-5)
