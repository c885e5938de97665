"""Corruptions: deterministic per key, with the stated rates measured on large arrays."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import corruption

BIG = (64, 64, 64, 1)  # 262,144 pixels: rates are measured to about +-0.003


def _gray(shape=BIG, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(0.2, 0.8, size=shape).astype(np.float32))


def test_same_key_same_corruption_other_key_other_corruption():
    x = _gray((8, 6, 6, 3))
    fns = [
        lambda k, v: corruption.gaussian_noise(k, v, 0.3),
        lambda k, v: corruption.salt_and_pepper(k, v, 0.3),
        lambda k, v: corruption.pixel_dropout(k, v, 0.3),
    ]
    for fn in fns:
        a = fn(jax.random.key(1), x)
        chex.assert_shape(a, x.shape)
        np.testing.assert_array_equal(a, fn(jax.random.key(1), x))
        np.testing.assert_allclose(jax.jit(fn)(jax.random.key(1), x), a, rtol=1e-6, atol=1e-7)  # fusion: ulps
        assert not np.array_equal(a, fn(jax.random.key(2), x))
    m1 = corruption.random_patch_mask(jax.random.key(3), (8,), (6, 6), 0.5, 2)
    np.testing.assert_array_equal(m1, corruption.random_patch_mask(jax.random.key(3), (8,), (6, 6), 0.5, 2))
    assert not np.array_equal(m1, corruption.random_patch_mask(jax.random.key(4), (8,), (6, 6), 0.5, 2))


def test_gaussian_noise_has_the_stated_std_and_is_clipped():
    x = jnp.full(BIG, 0.5)
    unclipped = corruption.gaussian_noise(jax.random.key(0), x, 0.1, clip=False)
    noise = np.asarray(unclipped - x)
    assert abs(noise.mean()) < 0.001
    np.testing.assert_allclose(noise.std(), 0.1, rtol=0.01)
    clipped = corruption.gaussian_noise(jax.random.key(0), x, 2.0)
    assert float(clipped.min()) == 0.0 and float(clipped.max()) == 1.0
    np.testing.assert_array_equal(corruption.gaussian_noise(jax.random.key(0), x, 0.0), x)


def test_salt_and_pepper_hits_the_stated_fraction_half_white_half_black():
    x = _gray()
    out = np.asarray(corruption.salt_and_pepper(jax.random.key(0), x, 0.2))
    hit = out != np.asarray(x)  # gray values lie in [0.2, 0.8], so every hit changes the pixel
    assert abs(hit.mean() - 0.2) < 0.004
    assert set(np.unique(out[hit])) == {0.0, 1.0}
    assert abs((out[hit] == 1.0).mean() - 0.5) < 0.01
    np.testing.assert_array_equal(corruption.salt_and_pepper(jax.random.key(0), x, 0.0), x)


def test_pixel_dropout_zeroes_the_stated_fraction_of_whole_pixels():
    x = _gray((64, 64, 64, 3))
    out = np.asarray(corruption.pixel_dropout(jax.random.key(0), x, 0.3))
    dropped = out == 0.0
    assert abs(dropped.mean() - 0.3) < 0.004
    np.testing.assert_array_equal(dropped.all(-1), dropped.any(-1))  # all channels of a pixel together
    np.testing.assert_array_equal(out[~dropped], np.asarray(x)[~dropped])  # survivors are not rescaled
    np.testing.assert_array_equal(corruption.pixel_dropout(jax.random.key(0), x, 1.0), 0.0)


def test_patch_mask_masks_exactly_the_ratio_of_square_patches():
    mask = np.asarray(corruption.random_patch_mask(jax.random.key(0), (4000,), (28, 28), 0.5, 4))
    chex.assert_shape(mask, (4000, 28, 28, 1))
    patches = mask[..., 0].reshape(4000, 7, 4, 7, 4)
    # every 4x4 patch is all masked or all visible ...
    per_patch = patches.mean(axis=(2, 4))
    assert set(np.unique(per_patch)) <= {0.0, 1.0}
    # ... exactly round(0.5 * 49) = 24 patches per image, and each patch is masked equally often
    np.testing.assert_array_equal(per_patch.sum(axis=(1, 2)), 24)
    np.testing.assert_allclose(per_patch.mean(0), 24 / 49, atol=0.03)


def test_patch_mask_crops_partial_patches_at_the_border():
    mask = np.asarray(corruption.random_patch_mask(jax.random.key(1), (500,), (28, 28), 0.25, 5))
    chex.assert_shape(mask, (500, 28, 28, 1))
    # a 6x6 grid of 5x5 patches covers 30x30; the last row/column of patches is 3 pixels wide
    assert corruption.num_masked_patches(36, 0.25) == 9
    grid = np.pad(mask[..., 0], ((0, 0), (0, 2), (0, 2)), mode="edge").reshape(500, 6, 5, 6, 5)
    np.testing.assert_array_equal(grid.max(axis=(2, 4)).sum(axis=(1, 2)), 9)


def test_apply_mask_fills_masked_pixels_in_every_channel():
    x = _gray((2, 4, 4, 3))
    mask = corruption.random_patch_mask(jax.random.key(0), (2,), (4, 4), 0.5, 2)
    out = np.asarray(corruption.apply_mask(x, mask, fill=0.25))
    full = np.broadcast_to(np.asarray(mask) > 0, x.shape)
    np.testing.assert_array_equal(out[full], 0.25)
    np.testing.assert_array_equal(out[~full], np.asarray(x)[~full])


def test_errors_name_the_argument():
    x = _gray((2, 4, 4, 1))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="rate must be in \\[0, 1\\], got 1.5"):
        corruption.salt_and_pepper(key, x, 1.5)
    with pytest.raises(ValueError, match="rate must be in \\[0, 1\\], got -0.1"):
        corruption.pixel_dropout(key, x, -0.1)
    with pytest.raises(ValueError, match="std must be a non-negative number, got -1.0"):
        corruption.gaussian_noise(key, x, -1.0)
    with pytest.raises(ValueError, match="x must be images \\[..., H, W, C\\], got shape \\(4, 4\\)"):
        corruption.pixel_dropout(key, x[0, ..., 0], 0.1)
    with pytest.raises(
        ValueError, match="noise must be one of \\('gaussian', 'salt_and_pepper', 'dropout'\\), got 'blur'"
    ):
        corruption.make_noise_fn("blur")
    with pytest.raises(ValueError, match="mask_ratio must be in \\[0, 1\\], got 2.0"):
        corruption.random_patch_mask(key, (2,), (4, 4), 2.0, 2)
    with pytest.raises(ValueError, match="patch_size must be an integer in \\[1, 4\\] for 4x4 images, got 5"):
        corruption.random_patch_mask(key, (2,), (4, 4), 0.5, 5)
