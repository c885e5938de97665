"""Resizing to ``--image-size``: the shorter side to S, then the centre square (one Pillow resampling)."""

from __future__ import annotations

import sys

import numpy as np


def log_resizing(source: str, sizes: set[tuple[int, int]], image_size: int) -> None:
    """Says on stderr that images of ``sizes`` (width, height) are resized to ``image_size`` (none: no line)."""
    other = sorted(size for size in sizes if size != (image_size, image_size))
    if not other:
        return
    listed = ", ".join(f"{h}x{w}" for w, h in other[:3])  # height x width, as every image shape here
    listed += f" and {len(other) - 3} more sizes" if len(other) > 3 else ""
    print(
        f"data: {source}: images of {listed} are resized to {image_size}x{image_size} (shorter side to "
        f"{image_size}, then the centre square; --image-size {image_size})",
        file=sys.stderr,
    )


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square ``(left, top, right, bottom)`` of side ``min(width, height)``."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def resize_image(image, size: int):
    """A PIL image's centre square resized to ``size x size`` (bicubic, antialiased when shrinking): the
    shorter side resized to ``size`` and the centre cropped, in one resampling."""
    from PIL import Image

    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BICUBIC, box=center_square(*image.size))


def resize_center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """``[N, H, W, C]`` -> ``[N, size, size, C]``: shorter side resized to ``size``, centre cropped. ``uint8``
    stays ``uint8``; float32 is resampled in float and clipped to [0, 1] (bicubic overshoots a little at edges)."""
    from PIL import Image

    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    out = np.empty((n, size, size, c), images.dtype)
    for i in range(n):
        if images.dtype == np.uint8 and c in (1, 3):
            image = Image.fromarray(images[i] if c == 3 else images[i, ..., 0])
            out[i] = np.asarray(resize_image(image, size)).reshape(size, size, c)
            continue
        for channel in range(c):
            plane = images[i, ..., channel]
            image = Image.fromarray(plane if plane.dtype == np.uint8 else plane.astype(np.float32))
            resized = np.asarray(resize_image(image, size))
            out[i, ..., channel] = resized if images.dtype == np.uint8 else np.clip(resized, 0.0, 1.0)
    return out
