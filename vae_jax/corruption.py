"""Input corruptions for denoising and masked autoencoders, as pure functions of a key.

Every function takes an explicit PRNG key and images ``[..., H, W, C]`` in [0, 1]; the same key gives the
same corruption. Noise that acts on *pixels* (salt-and-pepper, dropout, patch masks) draws one decision per
pixel position and applies it to all channels, so an RGB pixel is dropped or salted as a whole.

A denoising autoencoder (Vincent et al., 2008) is trained to map the corrupted input back to the clean one;
a masked autoencoder (He et al., 2022) to fill in masked patches ("inpainting").

References:
  Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing Robust Features with Denoising
  Autoencoders", ICML 2008.
  He, Chen, Xie, Li, Dollár & Girshick, "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

NOISES = ("gaussian", "salt_and_pepper", "dropout")


def _check_rate(rate: float, name: str) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {rate!r}")


def _check_std(std: float) -> None:
    if not std >= 0.0:
        raise ValueError(f"std must be a non-negative number, got {std!r}")


def _check_images(x: jax.Array) -> None:
    if jnp.ndim(x) < 3:
        raise ValueError(f"x must be images [..., H, W, C], got shape {jnp.shape(x)}")


def _pixel_shape(x: jax.Array) -> tuple[int, ...]:
    """``[..., H, W, 1]``: one draw per pixel position, shared by the channels."""
    return (*jnp.shape(x)[:-1], 1)


def gaussian_noise(key: jax.Array, x: jax.Array, std: float, clip: bool = True) -> jax.Array:
    """``x + std * eps`` with ``eps ~ N(0, I)`` per element, clipped to [0, 1] if ``clip``; shape of ``x``."""
    _check_images(x)
    _check_std(std)
    noisy = x + std * jax.random.normal(key, jnp.shape(x), jnp.result_type(x))
    return jnp.clip(noisy, 0.0, 1.0) if clip else noisy


def salt_and_pepper(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Sets a fraction ``rate`` of the pixels to 0 or 1: each pixel independently is hit with probability
    ``rate`` and becomes white (salt, 1) or black (pepper, 0) with probability 1/2. Shape of ``x``."""
    _check_images(x)
    _check_rate(rate, "rate")
    hit_key, salt_key = jax.random.split(key)
    hit = jax.random.bernoulli(hit_key, rate, _pixel_shape(x))
    salt = jax.random.bernoulli(salt_key, 0.5, _pixel_shape(x)).astype(jnp.result_type(x))
    return jnp.where(hit, salt, x)


def pixel_dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Sets each pixel to 0 independently with probability ``rate``; shape of ``x``. Unlike network dropout,
    the survivors are not scaled by ``1 / (1 - rate)``: the corrupted input must still look like an image."""
    _check_images(x)
    _check_rate(rate, "rate")
    keep = ~jax.random.bernoulli(key, rate, _pixel_shape(x))
    return jnp.where(keep, x, jnp.zeros_like(x))


def make_noise_fn(noise: str, std: float = 0.5, rate: float = 0.25) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``noise_fn(key, x) -> corrupted x`` for one of ``NOISES``: ``std`` is the standard deviation of
    ``"gaussian"``, ``rate`` the hit probability of ``"salt_and_pepper"`` and ``"dropout"``."""
    if noise == "gaussian":
        _check_std(std)
        return lambda key, x: gaussian_noise(key, x, std)
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    _check_rate(rate, "rate")
    if noise == "salt_and_pepper":
        return lambda key, x: salt_and_pepper(key, x, rate)
    return lambda key, x: pixel_dropout(key, x, rate)


def num_masked_patches(num_patches: int, mask_ratio: float) -> int:
    """How many of ``num_patches`` patches a ``mask_ratio`` masks: ``round(ratio * n)``."""
    return int(round(mask_ratio * num_patches))


def random_patch_mask(
    key: jax.Array, batch_shape: tuple[int, ...], image_hw: tuple[int, int], mask_ratio: float, patch_size: int
) -> jax.Array:
    """A random mask of square patches: exactly ``round(mask_ratio * P)`` of the P patches per image.

    The image is tiled by a ``ceil(H / p) x ceil(W / p)`` grid of ``p x p`` patches (the last row and column
    cut at the border when ``p`` does not divide the size). Each image independently gets a uniformly random
    subset of the patches, of fixed size as in MAE, so the masked fraction of *patches* is the same for every
    image; when ``p`` does not divide the size, the masked fraction of *pixels* varies slightly around it.

    Args:
      batch_shape: leading shape, e.g. ``(B,)``; image_hw: ``(H, W)``.
      mask_ratio: fraction of patches to mask, in [0, 1].
      patch_size: side of the square patches, ``1 <= p <= min(H, W)``.

    Returns:
      ``[*batch_shape, H, W, 1]`` float32 mask, 1 where masked (hidden from the encoder), 0 where visible.
    """
    _check_rate(mask_ratio, "mask_ratio")
    h, w = image_hw
    if not (isinstance(patch_size, int) and 1 <= patch_size <= min(h, w)):
        raise ValueError(f"patch_size must be an integer in [1, {min(h, w)}] for {h}x{w} images, got {patch_size!r}")
    grid_h, grid_w = -(-h // patch_size), -(-w // patch_size)
    num_masked = num_masked_patches(grid_h * grid_w, mask_ratio)
    batch_shape = tuple(batch_shape)
    # Rank each image's patches by an independent uniform score: the lowest num_masked are masked
    # (a uniformly random subset of fixed size, as MAE's per-sample shuffle).
    scores = jax.random.uniform(key, (*batch_shape, grid_h * grid_w))
    ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    patch_mask = (ranks < num_masked).astype(jnp.float32).reshape(*batch_shape, grid_h, grid_w)
    pixel_mask = jnp.repeat(jnp.repeat(patch_mask, patch_size, axis=-2), patch_size, axis=-1)
    return pixel_mask[..., :h, :w, None]


def apply_mask(x: jax.Array, mask: jax.Array, fill: float = 0.0) -> jax.Array:
    """``x`` with the masked pixels (``mask == 1``, broadcast over channels) set to ``fill``."""
    return jnp.where(mask > 0, jnp.asarray(fill, jnp.result_type(x)), x)
