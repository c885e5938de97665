"""The main job (`experiments.vae`) written the usual PyTorch way: the benchmark's whole-process yardstick.

    pip install torch          # not a dependency of vae_jax (the bench extra)
    python -m benchmarks.torch_vae --epochs 10 --workdir runs/torch_vae

The same 784-400-20 MLP VAE, Bernoulli decoder, loss (summed per example, averaged over the batch),
Adam 1e-3, batch 128 and data (:func:`vae_jax.data.load_dataset`) as `experiments.vae`, trained eagerly
as in the PyTorch examples' VAE, with a checkpoint every 5 epochs and at the end. It draws fewer figures
than `experiments.vae`, so a whole-process time set beside that job's favours PyTorch.
"""

from __future__ import annotations

import json
import os
import sys
import time

from vae_jax import cli


def main(argv=None) -> dict:
    start = time.perf_counter()
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dataset", default="mnist", help="dataset spec, as experiments.vae takes it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="runs/torch_vae")
    args = parser.parse_args(argv)
    if args.epochs <= 0 or args.batch_size <= 0:
        parser.error("--epochs and --batch-size must be positive")
    try:
        import torch
    except ImportError:
        parser.error("this reference needs PyTorch: pip install torch")
    import numpy as np
    from torch import nn
    from torch.nn import functional as F

    from vae_jax import data as data_lib

    try:
        dataset = data_lib.load_dataset(args.dataset, batch_size=args.batch_size)
    except data_lib.DataError as err:
        parser.error(str(err))
    torch.manual_seed(args.seed)
    x_train = torch.from_numpy(dataset.train_pixels.reshape(len(dataset.train_pixels), -1).astype(np.float32) / 255)
    x_test = torch.from_numpy(dataset.test_pixels.reshape(len(dataset.test_pixels), -1).astype(np.float32) / 255)

    class VAE(nn.Module):
        def __init__(self, pixels=784, hidden=400, latent=20):
            super().__init__()
            self.enc = nn.Linear(pixels, hidden)
            self.mean, self.logvar = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
            self.dec1, self.dec2 = nn.Linear(latent, hidden), nn.Linear(hidden, pixels)

        def decode(self, z):
            return self.dec2(F.relu(self.dec1(z)))

        def forward(self, x):
            h = F.relu(self.enc(x))
            mean, logvar = self.mean(h), self.logvar(h)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            return self.decode(z), mean, logvar

    def neg_elbo(logits, x, mean, logvar):  # summed per example, averaged over the batch
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * torch.sum(torch.exp(logvar) + mean**2 - 1.0 - logvar)
        return (recon + kl) / len(x)

    try:
        os.makedirs(os.path.join(args.workdir, "checkpoints"), exist_ok=True)
    except OSError as err:
        parser.error(f"--workdir {args.workdir}: cannot write ({err.strerror or type(err).__name__})")
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    steps = len(x_train) // args.batch_size  # full batches only, as experiments.vae
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(x_train))
        total = 0.0
        for i in range(steps):
            xb = x_train[perm[i * args.batch_size : (i + 1) * args.batch_size]]
            logits, mean, logvar = model(xb)
            loss = neg_elbo(logits, xb, mean, logvar)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        model.eval()
        test = 0.0
        with torch.no_grad():
            for xb in torch.split(x_test, 1000):
                logits, mean, logvar = model(xb)
                test += neg_elbo(logits, xb, mean, logvar).item() * len(xb) / len(x_test)
        history.append({"epoch": epoch, "train_loss": total / steps, "test_neg_elbo": test})
        print(json.dumps(history[-1]), file=sys.stderr)
        if epoch % 5 == 0 or epoch == args.epochs:
            torch.save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                os.path.join(args.workdir, "checkpoints", f"{epoch}.pt"),
            )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        recon = torch.sigmoid(model(x_test[:10])[0]).numpy()
        samples = torch.sigmoid(model.decode(torch.randn(50, 20))).numpy()
    for name, images, rows in (
        ("reconstructions", np.concatenate([x_test[:10].numpy(), recon]), 2),
        ("samples", samples, 5),
    ):
        fig, axes = plt.subplots(rows, len(images) // rows, figsize=(len(images) // rows, rows))
        for ax, image in zip(axes.flat, images):
            ax.imshow(image.reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
        fig.savefig(os.path.join(args.workdir, f"{name}.png"), dpi=80, bbox_inches="tight")
        plt.close(fig)
    fig, ax = plt.subplots()
    for key in ("train_loss", "test_neg_elbo"):
        ax.plot([h["epoch"] for h in history], [h[key] for h in history], label=key)
    ax.legend()
    fig.savefig(os.path.join(args.workdir, "loss_curves.png"), dpi=80)
    plt.close(fig)
    summary = {
        "epochs": args.epochs,
        "test_neg_elbo": history[-1]["test_neg_elbo"],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - start,
    }
    with open(os.path.join(args.workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"test neg-ELBO {summary['test_neg_elbo']:.2f} nats after {args.epochs} epochs; outputs in {args.workdir}")
    return summary


if __name__ == "__main__":
    main()
