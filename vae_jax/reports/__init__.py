"""What an experiment measures and draws once its runs are trained, one module per study: ``hvae``,
``vqvae``, ``building_blocks``, ``beta_vae``, ``latent_space`` and ``evaluation`` (each module's docstring
says what). The experiments in ``experiments/`` parse the flags, train through :mod:`vae_jax.runner` and
call these.
"""
