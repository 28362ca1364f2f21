"""The DiT train and sample commands (paper section 4): they put together the run plumbing of
minidit.training (data, optimiser and EMA, parallelism, checkpoints, the run directory, pictures)
and, for latent diffusion, the frozen autoencoder of minidit.latent. They live in their own package
because minidit.latent uses that plumbing too: neither package imports this one, so no package
imports a package that imports it back.
"""
