"""A two-level hierarchical VAE (the lectures' "Hierarchical VAEs"), as flax.linen modules.

Generative model (top-down) and inference model (bottom-up), all diagonal Gaussians:

    p(z2) = N(0, I)                     q(z1 | x)  = N(mu_q1(x),  exp(lv_q1(x)))
    p(z1 | z2) = N(mu_p1(z2), exp(lv_p1(z2)))   q(z2 | z1) = N(mu_q2(z1), exp(lv_q2(z1)))
    p(x | z1)  the image likelihood

With z1 ~ q(z1|x) and z2 ~ q(z2|z1) the ELBO is

    log p(x) >= E_q[log p(x|z1)] - E_q[log q(z1|x) - log p(z1|z2)] - E_{q(z1|x)}[KL(q(z2|z1) || p(z2))].

The lecture slide writes E_{q(z1|z2)}[log p(x|z1)] - KL(q(z1|x) || p(z1|x)) - KL(q(z2|z1) || p(z2)); the
expectation is over q(z1|x) and the first KL's second argument is the learned prior p(z1|z2), not the
intractable posterior p(z1|x). :mod:`vae_jax.tasks.hvae` says how each term is estimated. The networks are
MLPs: the encoder and decoder of :mod:`vae_jax.models.vae`, and Gaussian heads ``top_hidden`` wide.

References:
  Rezende, Mohamed & Wierstra, "Stochastic Backpropagation and Approximate
  Inference in Deep Generative Models", ICML 2014 (stacked stochastic layers).
  Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016
  (the two-stochastic-layer architecture on MNIST).
  Sønderby et al., "Ladder Variational Autoencoders", NeurIPS 2016.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.models.vae import GaussianVAE, MLPEncoder, make_mlp_decoder


class HVAE(GaussianVAE):
    """Two stochastic layers: x -> z1 (``latent_dim`` D1) -> z2 (``top_latent_dim`` D2, prior N(0, I)).

    The bottom layer is the :class:`~vae_jax.models.vae.GaussianVAE` core (``encode`` is q(z1|x), ``decode``
    p(x|z1), the decoder mirroring ``hidden``); ``top_hidden``: widths of q(z2|z1) and p(z1|z2);
    ``image_shape`` ``(H, W, C)``; ``likelihood`` sets the decoder's output channels (C or 2C).
    """

    latent_dim: int = 20
    top_latent_dim: int = 10
    hidden: Sequence[int] = (400,)
    top_hidden: Sequence[int] = (100,)
    image_shape: Sequence[int] = (28, 28, 1)
    likelihood: str = "bernoulli"

    def setup(self):
        self.encoder = MLPEncoder(tuple(self.hidden), self.latent_dim)  # q(z1|x)
        self.top_encoder = MLPEncoder(tuple(self.top_hidden), self.top_latent_dim)  # q(z2|z1)
        self.top_prior = MLPEncoder(tuple(reversed(self.top_hidden)), self.latent_dim)  # p(z1|z2)
        self.decoder, self.shared_logvar = make_mlp_decoder(self.hidden, self.image_shape, self.likelihood)  # p(x|z1)

    def encode_top(self, z1: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z2|z1): ``[B, D1]`` -> (mean, logvar), each ``[B, D2]``."""
        return self.top_encoder(z1)

    def prior_bottom(self, z2: jax.Array) -> tuple[jax.Array, jax.Array]:
        """p(z1|z2): ``[B, D2]`` -> (mean, logvar), each ``[B, D1]``."""
        return self.top_prior(z2)

    def __call__(self, x: jax.Array, key: jax.Array) -> dict:
        """One reparameterized pass z1 ~ q(z1|x), z2 ~ q(z2|z1): ``decoder_out`` ``[B, H, W, C']``;
        ``z1``, ``q1_mean``, ``q1_logvar``, ``p1_mean``, ``p1_logvar`` ``[B, D1]``; ``z2``, ``q2_mean``,
        ``q2_logvar`` ``[B, D2]``."""
        key1, key2 = jax.random.split(key)
        q1_mean, q1_logvar = self.encode(x)
        z1 = losses.reparameterize(key1, q1_mean, q1_logvar)
        q2_mean, q2_logvar = self.encode_top(z1)
        z2 = losses.reparameterize(key2, q2_mean, q2_logvar)
        p1_mean, p1_logvar = self.prior_bottom(z2)
        return {
            "decoder_out": self.decode(z1),
            "z1": z1,
            "q1_mean": q1_mean,
            "q1_logvar": q1_logvar,
            "p1_mean": p1_mean,
            "p1_logvar": p1_logvar,
            "z2": z2,
            "q2_mean": q2_mean,
            "q2_logvar": q2_logvar,
        }

    def sample(self, key: jax.Array, n: int, temperature: float = 1.0) -> jax.Array:
        """Ancestral sampling z2 ~ N(0, t²I), z1 ~ N(mean, t² var) of p(z1|z2): decoder outputs ``[n, H, W, C']``.

        ``temperature`` t scales both layers' standard deviations (1: the model's prior).
        """
        key2, key1 = jax.random.split(key)
        z2 = jax.random.normal(key2, (n, self.top_latent_dim)) * temperature
        p1_mean, p1_logvar = self.prior_bottom(z2)
        return self.decode(losses.reparameterize(key1, p1_mean, p1_logvar + 2.0 * jnp.log(temperature)))
