"""The run plumbing every training command shares (paper section 4, docs/paper.md §4): the data (data.py,
with the built-in shapes in shapes.py and your own images in folder.py), AdamW and the EMA
(optim.py), data parallelism over worker threads with its gradient sum (parallel.py) and over
processes (distributed.py), minidit's checkpoint format (checkpoint.py), the run directory
(rundir.py) and pictures (viz.py). It imports neither the autoencoder (minidit.latent) nor the
commands built on it (minidit.commands: the DiT train and sample commands).
"""
