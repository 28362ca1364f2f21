"""Reading a folder of your own images, one sub-folder per class, prepared as DiT prepares
ImageNet (docs/paper.md §4.1): ADM's center_crop_arr, 8-bit grey or RGB. minidit.training.data turns
what it reads into an ImageDataset (load_image_folder).
"""
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif")


def center_crop_arr(pil_image, image_size):
    """ADM's center crop as used by DiT (docs/paper.md §4.1); returns an (S, S[, C]) uint8 array.

    While the short side is at least twice the target, halve the image with a BOX filter (an
    exact 2x2 average, so large photos are not aliased); then BICUBIC-resize so the short side
    equals the target (scale = target / short side, each side rounded); then crop the centre.
    """
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size),
                                 resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


def _to_8bit(img, path):
    """Bring any common Pillow mode to 8-bit "L" or "RGB".

    16- and 32-bit integer grey ("I;16*", "I") is read as 0..65535 and scaled to 0..255; a plain
    convert("L") would clip it and turn the image white. Transparency is composited on a white
    background. CMYK and YCbCr are converted by Pillow.
    """
    mode = img.mode
    if mode in ("1", "L", "RGB"):
        return img.convert("L") if mode == "1" else img
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")     # Pillow un-premultiplies "La"/"RGBa" here
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("RGB", "CMYK", "YCbCr", "RGBX"):
        return img.convert("RGB")
    raise ValueError(f"unsupported image mode {mode!r} in {path}: use 8-bit or 16-bit grey, "
                     "RGB(A), palette or CMYK images")


def read_image(path, image_size, channels=3):
    """Read one image file and prepare it as DiT does; returns (S, S, channels) uint8.

    Raises ValueError naming the file when it cannot be decoded (truncated, not an image) or
    has an unsupported mode.
    """
    try:
        with Image.open(path) as img:
            img.load()   # force a full decode now: Image.open only reads the header
    except Exception as e:  # Pillow raises OSError, SyntaxError, zlib errors ... for bad files
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    img = _to_8bit(img, path).convert("L" if channels == 1 else "RGB")
    arr = center_crop_arr(img, image_size)
    return arr.reshape(image_size, image_size, channels)


def read_image_folder(root, image_size=32, channels=3):
    """Images of your own, one sub-folder per class: root/<class name>/<image files>.

    Class ids follow the sorted folder names; files are read in sorted order, and files without
    an image extension or starting with "." are skipped. Every image goes through center_crop_arr
    (docs/paper.md §4.1). Returns images (N, image_size, image_size, channels) uint8, labels (N,)
    int64 and the class names.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder: expected root/<class name>/<images>")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"no class folders in {root}: put the images of each class in their own "
                         "sub-folder, e.g. root/cat/001.png and root/dog/001.png")
    images, labels = [], []
    for label, d in enumerate(class_dirs):
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"class folder {d} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        images += [read_image(f, image_size, channels) for f in files]
        labels += [label] * len(files)
    return np.stack(images), np.array(labels, dtype=np.int64), [d.name for d in class_dirs]
