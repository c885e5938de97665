"""What an experiment measures and draws once its runs are trained, one module per study.

``vae_jax.reports.hvae`` (the hierarchical VAE against a one-level VAE of matched size),
``vae_jax.reports.vqvae`` (a VQ-VAE's codebook usage and the samples of its PixelCNN prior),
``vae_jax.reports.building_blocks`` (the ops of :mod:`vae_jax.ops` on one image, with numeric checks),
``vae_jax.reports.beta_vae`` (a sweep over beta, its schedule and free bits), ``vae_jax.reports.latent_space``
(AE and VAE latent spaces side by side) and ``vae_jax.reports.evaluation`` (a VAE checkpoint's bounds).
The experiments in ``experiments/`` parse the flags, train through :mod:`vae_jax.runner` and call these.
"""
