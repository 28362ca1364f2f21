"""Pictures the commands write: labelled sample grids and loss curves (matplotlib, Agg), and the
model-space to uint8 conversion of samples."""
import json
from pathlib import Path

import numpy as np

from ..cli import atomic_write


def figure(figsize):
    """A figure drawn straight to a PNG canvas: no pyplot state, so the commands never change
    the plotting backend of a notebook that calls them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def to_uint8(x):
    """Model-space images (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), as DiT's sample_ddp.py:
    clamp(127.5 x + 128, 0, 255)."""
    from ..backend import to_numpy
    x = np.asarray(to_numpy(x), dtype=np.float32)
    return np.clip(127.5 * x + 128.0, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def save_grid(images, labels, class_names, path, ncol=None, title=None, cell=1.1):
    """Write a PNG grid of uint8 images (N, H, W, C), one row per class present, labelled.
    cell: the side of one image in inches at 100 dpi (1.1: 110 pixels; 2.56 shows 256 px 1:1)."""
    images, labels = np.asarray(images), np.asarray(labels)
    classes = list(dict.fromkeys(labels.tolist()))  # in order of first appearance
    per_class = [np.flatnonzero(labels == c) for c in classes]
    ncol = ncol or max(len(p) for p in per_class)
    fig = figure(figsize=(cell * ncol + 1.6, cell * len(classes) + 0.4))
    axes = fig.subplots(len(classes), ncol, squeeze=False)
    for r, (c, idx) in enumerate(zip(classes, per_class)):
        for j in range(ncol):
            ax = axes[r, j]
            ax.set_xticks([]), ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(idx):
                im = images[idx[j]]
                ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=255,
                          interpolation="nearest")
        name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
        axes[r, 0].set_ylabel(f"{c}: {name}", rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as tmp:  # a grid is written whole or not at all
        fig.savefig(tmp, dpi=100)
    return path


def save_titled_grid(images, titles, path, ncol=4, title=None, cell=2.56):
    """Write uint8 images (N, H, W, C) as a PNG grid of `ncol` columns, each image under its own
    title (for a few large pictures of different classes, such as the released model's)."""
    images = np.asarray(images)
    ncol = max(1, min(ncol, len(images)))
    nrow = -(-len(images) // ncol)
    fig = figure(figsize=(cell * ncol, (cell + 0.3) * nrow + (0.4 if title else 0)))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < len(images):
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100)
    return path


def read_log(log_path):
    """The records of a JSONL training log; a last line cut short by a killed process is skipped."""
    rows = []
    with open(log_path) as f:
        lines = [line.strip() for line in f if line.strip()]
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{log_path}, line {i + 1}: not a JSON record") from None
    return rows


def plot_loss_curve(log_path, png_path, title="training loss", keys=("loss", "mse", "vb")):
    """Plot the logged losses (`keys`, those present) of a JSONL training log against the step;
    returns the PNG path, or None when there is no log record yet."""
    if not Path(log_path).exists():
        return None
    rows = [r for r in read_log(log_path) if keys[0] in r]
    if not rows:
        return None
    steps = np.array([r["step"] for r in rows])
    fig = figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for key in keys:
        if key in rows[0]:
            ax.plot(steps, [r[key] for r in rows], label=key, lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (mean over the logged steps)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    # fixed margins instead of tight_layout: a run redraws the plot as it goes, and measuring the
    # log axis's labels for tight_layout took most of a drawing's time
    fig.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.14)
    with atomic_write(png_path) as tmp:
        fig.savefig(tmp, dpi=100)
    return png_path
