"""What an experiment measures and draws once its runs are trained, one module per study.

``vae_jax.reports.hvae`` (the hierarchical VAE against a one-level VAE of matched size),
``vae_jax.reports.vqvae`` (a VQ-VAE's codebook usage and the samples of its PixelCNN prior) and
``vae_jax.reports.building_blocks`` (the ops of :mod:`vae_jax.ops` on one image, with numeric checks).
The experiments in ``experiments/`` parse the flags, train through :mod:`vae_jax.runner` and call these.
"""
