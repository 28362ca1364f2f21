"""The encoding of a latent run's training images (its fixed cost, before the first step), timed
in one process with the ways of running the encoder interleaved round by round: the chunk of
images encoded at once (latent.autoencoder.EncodedDataset.CHUNK) and whether the encoder's
forward keeps every layer's cache (as before, when nothing needed them) or frees each as it ends.
Prints seconds per 1,000 images (each image and its mirror image, as EncodedDataset does) and the
ratio to the first way, and checks that every way gives the same bits.

    python benchmarks/bench_encode.py [--images 2048] [--rounds 3] [--workers 2] [--chunks 256 64 32]
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np

from minidit.latent import autoencoder as ae
from minidit.latent import vae_blocks
from minidit.training.data import load_dataset
from minidit.training.parallel import DataParallel


def _encode(encoder, images, chunk, keep, workers):
    """EncodedDataset's table with the given chunk, the encoder's caches kept or freed."""
    saved_chunk, saved_forward = ae.EncodedDataset.CHUNK, ae.plan_forward
    ae.EncodedDataset.CHUNK = chunk
    ae.plan_forward = lambda P, plan, x, G, keep_caches=True: vae_blocks.plan_forward(P, plan, x, G, keep)
    try:
        with DataParallel(workers) as parallel:
            t = time.perf_counter()
            table = ae.EncodedDataset(encoder, images, parallel)
            return time.perf_counter() - t, table
    finally:
        ae.EncodedDataset.CHUNK, ae.plan_forward = saved_chunk, saved_forward


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", default="data/vae_shapes32.npz")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunks", type=int, nargs="+", default=[256, 64, 32])
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    a = ap.parse_args(argv)
    for name in ("images", "rounds", "workers"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if min(a.chunks) < 1:
        ap.error("--chunks must be at least 1")
    encoder = ae.load_vae_encoder(a.vae, device="cpu")
    images = load_dataset("shapes", split="train", image_size=32, n=a.images, seed=0).images
    # the way before (the first chunk, caches kept), then each chunk with the caches freed
    ways = [(a.chunks[0], True)] + [(c, False) for c in a.chunks]
    label = {w: f"chunk {w[0]:4d}, caches {'kept ' if w[1] else 'freed'}" for w in ways}
    times = {w: [] for w in ways}
    reference = None
    for _ in range(a.rounds):
        for w in ways:
            seconds, table = _encode(encoder, images, *w, a.workers)
            times[w].append(seconds * 1000 / a.images)
            if reference is None:
                reference = table
            elif not (np.array_equal(table.mean, reference.mean) and np.array_equal(table.std, reference.std)):
                sys.exit(f"{label[w]} gave other numbers than {label[ways[0]]}")
    base = statistics.median(times[ways[0]])
    print(f"{a.images} images and their mirror images, {a.workers} worker threads, {a.rounds} rounds interleaved; "
          f"every way gave the same bits")
    rows = []
    for w in ways:
        med = statistics.median(times[w])
        rows.append({"chunk": w[0], "caches_kept": w[1], "s_per_1000_images": times[w], "median": med,
                     "ratio": med / base})
        print(f"  {label[w]}: {med:6.2f} s per 1,000 images (rounds {', '.join(f'{v:.2f}' for v in times[w])})"
              f"  ratio {med / base:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"images": a.images, "workers": a.workers, "rounds": a.rounds, "ways": rows}, f, indent=1)


if __name__ == "__main__":
    main()
