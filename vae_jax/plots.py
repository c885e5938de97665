"""Figures from host arrays: image grids, reconstructions, samples, interpolations, latent maps, curves.

Every function takes NumPy arrays (call ``jax.device_get`` first), writes one PNG through
:func:`save_figure` and returns its path. Matplotlib runs on the non-interactive Agg backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from vae_jax import phases  # noqa: E402

VAE_LOSS_KEYS = ("train_loss", "test_neg_elbo", "test_recon", "test_kl")


def image_grid(images: np.ndarray, ncols: int, pad: int = 1) -> np.ndarray:
    """Tiles ``[N, H, W, C]`` images into one ``[rows*(H+pad), ncols*(W+pad), C]`` image."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    nrows = -(-n // ncols)
    grid = np.ones((nrows * (h + pad) - pad, ncols * (w + pad) - pad, c), np.float32)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        grid[r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = img
    return grid


def _show(ax, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, path: str) -> str:
    """Writes ``fig`` to ``path`` (PNG, 110 dpi, tight) and closes it; returns ``path``.

    Only process 0 of a ``--distributed`` run writes: the others close the figure and return
    the path, so every process lists the same figures and one writes them.
    """
    from vae_jax import distributed

    if distributed.is_main_process():
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with phases.phase("figures"):
            fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def save_image_rows(rows: Sequence[np.ndarray], labels: Sequence[str], path: str, title: str) -> str:
    """Rows of images ``[n, H, W, C]`` each, one labelled row per array."""
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(ncols * 0.6 + 1.5, len(rows) * 0.75 + 0.6), squeeze=False)
    for ax, row, label in zip(axes[:, 0], rows, labels):
        _show(ax, image_grid(row, ncols=len(row)))
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def save_reconstructions(
    originals: np.ndarray, reconstructions: np.ndarray, path: str, title: str = "Test reconstructions"
) -> str:
    """Originals in the top row, their reconstructions below."""
    return save_image_rows([originals, reconstructions], ["original", "reconstruction"], path, title)


def save_grid(images: np.ndarray, path: str, title: str, ncols: int = 10) -> str:
    """A plain grid of images, e.g. samples from the prior."""
    grid = image_grid(images, ncols=ncols)
    fig, ax = plt.subplots(figsize=(ncols * 0.6 + 0.4, grid.shape[0] / grid.shape[1] * ncols * 0.6 + 0.6))
    _show(ax, grid)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def save_latent_grid(
    images: np.ndarray,
    z0_values: np.ndarray,
    z1_values: np.ndarray,
    path: str,
    title: str,
    axis_labels: tuple[str, str] = ("z[0]", "z[1]"),
    max_ticks: int = 7,
) -> str:
    """Decodings over a 2-D latent plane (the "manifold" figure), with the latent coordinates on the axes.

    Args:
      images: ``[n1 * n0, H, W, C]`` decodings in row-major order: row ``i`` holds
        z[1] = ``z1_values[i]`` (top row first), column ``j`` z[0] = ``z0_values[j]``.
      z0_values: ``[n0]`` z[0] of the columns, left to right.
      z1_values: ``[n1]`` z[1] of the rows, top to bottom.
      max_ticks: at most this many labelled ticks per axis (evenly spread).
    """
    images = np.asarray(images)
    n0, n1 = len(z0_values), len(z1_values)
    if images.shape[0] != n0 * n1:
        raise ValueError(f"images holds {images.shape[0]} decodings, expected {n1} rows x {n0} columns")
    pad = 1
    h, w = images.shape[1:3]
    grid = image_grid(images, ncols=n0, pad=pad)
    fig, ax = plt.subplots(figsize=(0.42 * n0 + 1.6, 0.42 * n1 + 1.2))
    _show(ax, grid)
    for values, size, set_ticks, set_labels in (
        (z0_values, w, ax.set_xticks, ax.set_xticklabels),
        (z1_values, h, ax.set_yticks, ax.set_yticklabels),
    ):
        shown = np.unique(np.linspace(0, len(values) - 1, min(max_ticks, len(values))).round().astype(int))
        set_ticks(shown * (size + pad) + (size - 1) / 2.0)
        set_labels([f"{0.0 if abs(values[i]) < 1e-9 else values[i]:.2g}" for i in shown], fontsize=8)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def save_latent_scatter(
    latents_2d: np.ndarray | dict[str, np.ndarray],
    labels: np.ndarray | None,
    path: str,
    title: str,
    axis_labels: tuple[str, str] = ("z[0]", "z[1]"),
) -> str:
    """Scatter of ``[N, 2]`` latent coordinates, coloured by class label if given.

    A dict ``{panel title: [N, 2]}`` draws one panel per entry, side by side (the same ``labels`` for
    each), under ``title``.
    """
    panels = latents_2d if isinstance(latents_2d, dict) else {title: latents_2d}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8), squeeze=False)
    for ax, (name, xy) in zip(axes[0], panels.items(), strict=True):
        if labels is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6)
        else:
            top = 9.5 if labels.max() < 10 else labels.max() + 0.5
            points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=4, alpha=0.7, vmin=-0.5, vmax=top)
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
        ax.set_title(name, fontsize=10)
    if labels is not None:
        ticks = np.unique(labels) if labels.max() < 10 else None
        fig.colorbar(points, ax=list(axes[0]), label="label", ticks=ticks)
    if isinstance(latents_2d, dict):
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def save_curves(
    history: Sequence[dict],
    keys: Sequence[str],
    path: str,
    title: str = "Loss curves",
    ylabel: str = "nats per example",
    labels: dict[str, str] | None = None,
) -> str:
    """Per-epoch curves of the given ``metrics.jsonl`` keys; ``labels`` maps a key to its legend text."""
    labels = labels or {}
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [line["epoch"] for line in history]
    for key in keys:
        values = [line.get(key) for line in history]
        if any(v is not None for v in values):
            ax.plot(epochs, values, marker="o", markersize=3, label=labels.get(key, key))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # no epoch 1.25
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def save_loss_curves(
    history: Sequence[dict],
    workdir: str,
    keys: Sequence[str] = VAE_LOSS_KEYS,
    title: str = "Training and test loss",
    **kwargs,
) -> str:
    """``WORKDIR/loss_curves.png``: :func:`save_curves` of ``keys`` (the VAE's loss terms by default)."""
    return save_curves(history, keys, os.path.join(workdir, "loss_curves.png"), title, **kwargs)


def save_kl_per_dim(groups: dict, path: str, title: str = "Mean test KL per latent dimension") -> str:
    """One bar panel per model or latent layer: ``{label: [D] mean KL per dimension (nats)}``.

    Dimensions are sorted by KL, largest first, so collapsed dimensions
    (KL near 0) gather on the right.
    """
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups) + 0.6, 3.2), squeeze=False)
    for ax, (label, values) in zip(axes[0], groups.items()):
        values = np.sort(np.asarray(values, np.float64))[::-1]
        ax.bar(np.arange(len(values)), values, color="tab:blue")
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_title(f"{label} (sum {values.sum():.1f})", fontsize=9)
        ax.set_xlabel("dimension (sorted)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel("mean KL term (nats)")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def save_seed_curves(
    history: Sequence[dict],
    seeds: Sequence[int],
    keys: Sequence[str],
    path: str,
    title: str = "Per-seed learning curves",
    ylabel: str = "nats per example",
) -> str:
    """One panel per ``metrics.jsonl`` key, one line per seed (from each line's ``per_seed`` record)."""
    keys = [k for k in keys if history and k in history[0].get("per_seed", {})]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.5 * max(len(keys), 1), 3.6), squeeze=False)
    epochs = [line["epoch"] for line in history]
    for ax, key in zip(axes[0], keys):
        per_seed = np.asarray([line["per_seed"][key] for line in history])  # [epochs, R]
        for r, seed in enumerate(seeds):
            ax.plot(epochs, per_seed[:, r], linewidth=1, alpha=0.8, label=f"seed {seed}")
        ax.plot(epochs, per_seed.mean(axis=1), color="black", linewidth=2, label="mean")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(key, fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2 if len(seeds) > 6 else 1)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def signed_images(vectors: np.ndarray, image_shape) -> np.ndarray:
    """Columns ``[d, m]`` -> ``[m, H, W, C]`` in [0, 1] with 0.5 = zero, each scaled by its max |value|."""
    v = vectors.T / np.max(np.abs(vectors), axis=0)[:, None]
    return (0.5 + 0.5 * v).reshape(-1, *image_shape)


def save_basis_geometry(angles_deg, column_cos: np.ndarray, cos_to_pca: np.ndarray, path: str) -> str:
    """Principal angles, |cos| between AE columns ``[m, m]``, and |cos| between AE columns and PCA components
    ``[m, m]`` (``experiments.pca_vs_linear_ae``)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].bar(np.arange(1, len(angles_deg) + 1), sorted(angles_deg))
    axes[0].set_xlabel("principal angle index (smallest first)")
    axes[0].set_ylabel("degrees")
    axes[0].set_title("Principal angles: span(W_d) vs top-m PCA", fontsize=10)
    for ax, matrix, title, xlabel in [
        (axes[1], column_cos, "|cos| between AE decoder columns", "AE column"),
        (axes[2], cos_to_pca, "|cos|(AE column, PCA component)", "PCA component"),
    ]:
        image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("AE column")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)
