"""The same models in PyTorch, trained eagerly: the benchmark's outside yardstick (``pip install -e ".[bench]"``)."""

from __future__ import annotations

import functools
import time

import numpy as np


class TorchVariant:
    """The same VAE, loss, optimizer and batch in PyTorch, trained eagerly (784-400-20 MLP)."""

    def __init__(self, x: np.ndarray, batch_size: int):
        import torch

        self.torch = torch
        torch.manual_seed(0)
        self.x = torch.from_numpy(self.inputs(x))
        self.batch_size = batch_size

    def inputs(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).copy()

    def networks(self) -> tuple:
        """``(encoder, mean head, log-variance head, decoder)``, freshly initialised."""
        nn_ = self.torch.nn
        return (
            nn_.Sequential(nn_.Linear(784, 400), nn_.ReLU()),
            nn_.Linear(400, 20),
            nn_.Linear(400, 20),
            nn_.Sequential(nn_.Linear(20, 400), nn_.ReLU(), nn_.Linear(400, 784)),
        )

    @functools.cached_property
    def trained(self) -> tuple:
        """The networks and their Adam optimizer, built on the first epoch and trained on by every later one."""
        networks = self.networks()
        params = [p for m in networks for p in m.parameters()]
        return networks, self.torch.optim.Adam(params, lr=1e-3)

    def time_epoch(self) -> float:
        """One epoch, continuing the training of the previous call (the first call starts it)."""
        torch = self.torch
        (encoder, mean_l, logvar_l, decoder), opt = self.trained
        perm = torch.randperm(len(self.x))
        steps = len(self.x) // self.batch_size
        t0 = time.perf_counter()
        for i in range(steps):
            xb = self.x[perm[i * self.batch_size : (i + 1) * self.batch_size]]
            h = encoder(xb)
            mean, logvar = mean_l(h), logvar_l(h)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            recon = torch.nn.functional.binary_cross_entropy_with_logits(decoder(z), xb, reduction="sum")
            kl = 0.5 * torch.sum(torch.exp(logvar) + mean**2 - 1.0 - logvar)
            loss = (recon + kl) / self.batch_size
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0


class TorchConvVariant(TorchVariant):
    """The default convolutional VAE (``experiments.conv_vae``: convs 16, 32 of 4x4 stride 2, hidden 128, latent 16,
    Bernoulli decoder) in PyTorch, trained eagerly with the same loss, optimizer and batch.

    PyTorch's padding 1 gives XLA's SAME output sizes for these 4x4 stride-2 layers (28 -> 14 -> 7 and back), so
    both do the same arithmetic per step.
    """

    def inputs(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # NCHW

    def networks(self) -> tuple:
        nn_ = self.torch.nn
        encoder = nn_.Sequential(
            nn_.Conv2d(1, 16, 4, 2, 1),
            nn_.ReLU(),
            nn_.Conv2d(16, 32, 4, 2, 1),
            nn_.ReLU(),
            nn_.Flatten(),
            nn_.Linear(32 * 7 * 7, 128),
            nn_.ReLU(),
        )
        decoder = nn_.Sequential(
            nn_.Linear(16, 128),
            nn_.ReLU(),
            nn_.Linear(128, 32 * 7 * 7),
            nn_.ReLU(),
            nn_.Unflatten(1, (32, 7, 7)),
            nn_.ConvTranspose2d(32, 16, 4, 2, 1),
            nn_.ReLU(),
            nn_.ConvTranspose2d(16, 1, 4, 2, 1),
        )
        return encoder, nn_.Linear(128, 16), nn_.Linear(128, 16), decoder


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
