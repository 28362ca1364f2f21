"""Training and sampling DiT (paper section 4, PAPER.md 4): the data (data.py, with the built-in
shapes in shapes.py and your own images in folder.py), AdamW and the EMA (optim.py), data parallelism over worker threads with its
gradient sum (parallel.py), minidit's checkpoint format (checkpoint.py), the run directory every
training command shares (rundir.py), pictures (viz.py), and the train and sample commands
themselves (train.py, sample.py).
"""
