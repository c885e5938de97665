"""The linear autoencoder and PCA: same subspace, different basis.

The lecture's claim (Baldi & Hornik 1989): an autoencoder whose encoder and
decoder are single linear maps with no non-linearity, trained on squared
error, minimises the same objective as PCA with ``m`` components,

    min_{W_e, W_d}  sum_n || x_n - W_d W_e x_n ||^2     (x_n centered),

whose minimum is reached when the column space of ``W_d`` [d, m] is the span
of the top-m principal directions. Unlike PCA, nothing makes the columns of
``W_d`` orthogonal (or unit length): any invertible ``A`` [m, m] gives the same
loss with ``W_d A`` and ``A^-1 W_e``. So gradient descent finds PCA's
*subspace* in an arbitrary *basis*.

Both PCA and the linear AE (bias-free) see ``x - mean_train`` (the training-set mean, a constant, not a
parameter), and reconstructions add it back: that makes the AE exactly the PCA objective.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.errors import field, require
from vae_jax.protocol import Task, TrainConfig


@dataclasses.dataclass(frozen=True)
class LinearAEConfig(TrainConfig):
    """A linear AE with ``components`` latents against PCA with as many components."""

    kind: ClassVar[str] = "linear_ae"

    components: int = field(16, "m: latent size of the linear AE and number of PCA components")
    epochs: int = field(300, "number of epochs to train (300 x 35 steps on the 4,500-digit fallback)")
    learning_rate: float = field(3e-3, "Adam learning rate")
    workdir: str = field("runs/pca_vs_linear_ae", "output directory: config, metrics, checkpoints, figures")

    def validate(self) -> None:
        super().validate()
        require(self.components > 0, "components", "a positive integer", self.components)


class LinearAE(nn.Module):
    """x_c ``[B, d]`` (centered, flattened) -> (x_c_hat ``[B, d]``, z ``[B, m]``), z = W_e x_c, x_c_hat = W_d z.

    Both maps are bias-free ``Dense`` layers: ``encoder.kernel`` is W_e^T
    ``[d, m]`` and ``decoder.kernel`` is W_d^T ``[m, d]`` (flax's x @ kernel
    convention), so the decoder's columns are the rows of ``decoder.kernel``.
    """

    latent_dim: int
    input_dim: int

    def setup(self):
        self.encoder = nn.Dense(self.latent_dim, use_bias=False)
        self.decoder = nn.Dense(self.input_dim, use_bias=False)

    def __call__(self, x_centered: jax.Array) -> tuple[jax.Array, jax.Array]:
        z = self.encoder(x_centered)
        return self.decoder(z), z

    def encode(self, x_centered: jax.Array) -> jax.Array:
        return self.encoder(x_centered)

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)


def decoder_columns(params) -> np.ndarray:
    """W_d ``[d, m]``: the decoder's columns, the basis the AE reconstructs in."""
    return np.asarray(params["decoder"]["kernel"]).T


def encoder_matrix(params) -> np.ndarray:
    """W_e ``[m, d]``."""
    return np.asarray(params["encoder"]["kernel"]).T


def linear_ae_task(components: int, data_mean: np.ndarray) -> tuple[LinearAE, Task]:
    """The linear AE with ``components`` latents on ``x - data_mean`` as a runner :class:`Task`: ``(model, task)``.

    ``data_mean`` (the training-set mean image ``[H, W, C]`` or flat ``[d]``) is captured as a constant,
    so it is not trained. The loss is the batch mean of ``||x_c - W_d W_e x_c||^2`` (summed over pixels);
    ``eval_fn`` gives per-example ``sq_error`` and ``mse`` (the same, averaged over pixels).
    """
    mean = jnp.asarray(data_mean, jnp.float32).reshape(-1)  # [d]
    model = LinearAE(latent_dim=components, input_dim=int(mean.shape[0]))

    def per_example_sq_error(params, x):
        x_centered = x.reshape(x.shape[0], -1) - mean  # [B, d]
        x_hat, _ = model.apply({"params": params}, x_centered)
        return jnp.sum(jnp.square(x_centered - x_hat), axis=-1)  # [B]

    def loss_fn(params, batch, key, step):
        del key, step  # deterministic
        loss = jnp.mean(per_example_sq_error(params, batch["x"]))
        return loss, {"loss": loss}

    def eval_fn(params, batch, key):
        del key
        sq_error = per_example_sq_error(params, batch["x"])
        return {"sq_error": sq_error, "mse": sq_error / mean.shape[0]}

    def init_params(key):
        return model.init(key, jnp.zeros((1, model.input_dim), jnp.float32))["params"]

    return model, Task(init_params=init_params, loss_fn=loss_fn, eval_fn=eval_fn, headline="mse")


def linear_ae_reconstruct(params, x: np.ndarray, data_mean: np.ndarray) -> np.ndarray:
    """mean + W_d W_e (x - mean) for images ``[N, H, W, C]`` (same shape out)."""
    flat = x.reshape(len(x), -1) - data_mean.reshape(-1)
    recon = flat @ encoder_matrix(params).T @ decoder_columns(params).T
    return (recon + data_mean.reshape(-1)).reshape(x.shape)


# --- PCA ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PCAResult:
    """Top-m principal directions of a data matrix.

    Attributes:
      mean: ``[d]`` the data mean.
      components: ``[m, d]`` orthonormal rows, by decreasing variance.
      explained_variance: ``[m]`` variance along each component (divided by N - 1).
      total_variance: the sum of all d variances.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    total_variance: float

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """mean + U U^T (x - mean) for ``x`` ``[N, d]`` or images (same shape out)."""
        flat = x.reshape(len(x), -1) - self.mean
        return (flat @ self.components.T @ self.components + self.mean).reshape(x.shape)


def pca(x: np.ndarray, components: int) -> PCAResult:
    """PCA of ``x`` ``[N, ...]`` (flattened, in float64) by the SVD of the centered data: x_c = U S V^T, the
    ``components`` (m <= min(N, d)) are the first rows of V^T."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    if not 0 < components <= min(flat.shape):
        raise ValueError(f"components must be in 1..{min(flat.shape)}, got {components}")
    mean = flat.mean(axis=0)
    _, singular_values, vt = np.linalg.svd(flat - mean, full_matrices=False)
    variance = singular_values**2 / max(len(flat) - 1, 1)
    return PCAResult(mean, vt[:components], variance[:components], float(variance.sum()))


def mean_squared_error(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Mean over examples and pixels of (x - x_hat)^2."""
    return float(np.mean(np.square(np.asarray(x, np.float64) - np.asarray(x_hat, np.float64))))


# --- subspaces ---------------------------------------------------------------------


def orthonormal_basis(a: np.ndarray) -> np.ndarray:
    """An orthonormal basis ``[d, r]`` of the column space of ``a`` ``[d, k]`` (r = rank, via SVD)."""
    a = np.asarray(a, np.float64)
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    tol = s.max(initial=0.0) * max(a.shape) * np.finfo(np.float64).eps
    return u[:, s > tol]


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians, largest first) between the column spaces of ``a`` [d, k] and ``b`` [d, l].

    With orthonormal bases Q_a, Q_b, the cosines of the min(k, l) angles are
    the singular values of Q_a^T Q_b (Björck & Golub 1973). Small angles are
    taken from the sines instead, the singular values of (I - Q_a Q_a^T) Q_b,
    since arccos loses all precision near 0 (Knyazev & Argentati 2002).
    Same convention as ``scipy.linalg.subspace_angles``.
    """
    qa, qb = orthonormal_basis(a), orthonormal_basis(b)
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa  # project the smaller basis onto the larger space
    cosines = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), -1.0, 1.0)  # descending
    residual = qb - qa @ (qa.T @ qb)
    sines = np.clip(np.linalg.svd(residual, compute_uv=False), -1.0, 1.0)  # descending
    angles_from_cos = np.arccos(cosines)[::-1]  # largest first
    angles_from_sin = np.arcsin(sines)[: qb.shape[1]]  # largest first
    if len(angles_from_sin) < len(angles_from_cos):  # residual rank < l: the rest are zero
        angles_from_sin = np.pad(angles_from_sin, (0, len(angles_from_cos) - len(angles_from_sin)))
    small = np.square(np.cos(angles_from_cos)) >= 0.5
    return np.where(small, angles_from_sin, angles_from_cos)


def orthogonality(columns: np.ndarray) -> dict[str, float]:
    """How far the columns of ``columns`` [d, m] are from an orthonormal (or orthogonal) basis.

    Returns:
      A dict with ``max_abs_cosine``, the largest ``|cos|`` of the angle between
      two distinct columns (0 for an orthogonal basis); ``mean_abs_cosine``, the
      mean of the same over all pairs; ``offdiag_gram_ratio``,
      ``||G - diag(G)||_F / ||G||_F`` with ``G = W^T W`` (0 for orthogonal
      columns, whatever their lengths); ``column_norm_min`` /
      ``column_norm_max``, the column lengths (1 for orthonormal).
    """
    w = np.asarray(columns, np.float64)
    gram = w.T @ w  # [m, m]
    norms = np.sqrt(np.diag(gram))
    cosines = gram / np.outer(norms, norms)
    off = ~np.eye(len(gram), dtype=bool)
    abs_cos = np.abs(cosines[off]) if off.any() else np.zeros(1)
    offdiag = gram - np.diag(np.diag(gram))
    return {
        "max_abs_cosine": float(abs_cos.max()),
        "mean_abs_cosine": float(abs_cos.mean()),
        "offdiag_gram_ratio": float(np.linalg.norm(offdiag) / np.linalg.norm(gram)),
        "column_norm_min": float(norms.min()),
        "column_norm_max": float(norms.max()),
    }


def cosine_matrix(columns: np.ndarray) -> np.ndarray:
    """``|cos|`` between every pair of columns ``[m, m]`` (identity for an orthogonal basis)."""
    w = np.asarray(columns, np.float64)
    w = w / np.linalg.norm(w, axis=0, keepdims=True)
    return np.abs(w.T @ w)


def cosine_to(columns: np.ndarray, unit_columns: np.ndarray) -> np.ndarray:
    """``|cos|`` ``[m, k]`` between each of ``columns`` ``[d, m]`` and each of the unit ``unit_columns`` ``[d, k]``."""
    return np.abs((columns / np.linalg.norm(columns, axis=0)).T @ unit_columns)


def align_basis(columns: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares combination ``columns @ A`` [d, m] closest to ``target`` [d, m].

    When the two span the same subspace this recovers ``target`` exactly, which
    is how the AE's basis is shown to be PCA's up to an invertible change of basis.
    """
    coefficients, *_ = np.linalg.lstsq(np.asarray(columns, np.float64), np.asarray(target, np.float64), rcond=None)
    return columns @ coefficients


def degrees(radians) -> list[float]:
    """Angles in radians as a list of Python floats in degrees (for JSON summaries)."""
    return [float(v) for v in np.degrees(np.asarray(radians))]


# --- the comparison ----------------------------------------------------------------


def split_errors(reconstruct_fn, dataset) -> dict[str, float]:
    """``mse_train`` and ``mse_test``: :func:`mean_squared_error` of ``reconstruct_fn`` on each split."""
    return {
        f"mse_{split}": mean_squared_error(x, reconstruct_fn(x))
        for split, x in (("train", dataset.x_train), ("test", dataset.x_test))
    }


def compare_with_pca(pca_fit: PCAResult, params, dataset) -> dict:
    """Subspace, basis and error comparison of one trained linear AE with PCA (``experiments.pca_vs_linear_ae``)."""
    w_d = decoder_columns(params)  # [d, m]
    u = pca_fit.components.T  # [d, m]
    angles = degrees(principal_angles(w_d, u))
    mean = pca_fit.mean.astype(np.float32)
    cos_to_pca = cosine_to(w_d, u)  # [m, m]
    # The objective cannot pin the basis: W_d A, A^-1 W_e reconstruct identically for any invertible A.
    a = np.random.default_rng(0).normal(size=(w_d.shape[1],) * 2)
    w_e = encoder_matrix(params)
    flat_test = dataset.x_test.reshape(len(dataset.x_test), -1) - mean
    same_map_gap = float(
        np.max(np.abs(flat_test @ w_e.T @ w_d.T - flat_test @ (np.linalg.inv(a) @ w_e).T @ (w_d @ a).T))
    )
    return {
        "principal_angles_deg": angles,
        "max_principal_angle_deg": max(angles),
        "mean_principal_angle_deg": float(np.mean(angles)),
        **split_errors(lambda x: linear_ae_reconstruct(params, x, mean), dataset),
        "decoder_orthogonality": orthogonality(w_d),
        # 1 would mean each AE column is (a multiple of) one PCA component; below 1, columns mix components.
        "mean_best_abs_cosine_to_a_pca_component": float(cos_to_pca.max(axis=1).mean()),
        "reparameterized_reconstruction_max_abs_diff": same_map_gap,
    }


__all__ = [
    "compare_with_pca",
    "cosine_to",
    "split_errors",
    "LinearAEConfig",
    "LinearAE",
    "linear_ae_task",
    "linear_ae_reconstruct",
    "decoder_columns",
    "encoder_matrix",
    "PCAResult",
    "pca",
    "mean_squared_error",
    "orthonormal_basis",
    "principal_angles",
    "orthogonality",
    "cosine_matrix",
    "align_basis",
    "degrees",
]
