"""The helpers the notebooks share (minidit.course.notebook): source display, pictures, mosaics."""
import numpy as np

from minidit.course import notebook
from minidit.layers import linear


def test_show_source_prints_a_function_or_a_slice_of_a_module(capsys):
    notebook.show_source(linear.linear_forward)
    out = capsys.readouterr().out
    assert out.startswith("# minidit.layers.linear.linear_forward  (line ") and "def linear_forward" in out
    notebook.show_source(linear, "class LinearCache", "has_bias")
    out = capsys.readouterr().out.rstrip().splitlines()
    assert out[0].startswith("# minidit.layers.linear, lines ") and out[1] == "class LinearCache(NamedTuple):"
    assert out[-1].strip() == "has_bias: bool"
    notebook.show_source(linear, "def linear_backward")  # to the end of the file
    assert capsys.readouterr().out.rstrip().endswith("return dx, dw, db")


def test_pictures_and_mosaics():
    x = np.linspace(-1.5, 1.5, 3 * 2 * 4).reshape(3, 2, 4)
    pic = notebook.to_picture(x)
    assert pic.shape == (2, 4, 3) and pic.min() == 0.0 and pic.max() == 1.0
    assert notebook.to_picture(x[:1]).shape == (2, 4)  # grey stays 2-D for imshow
    images = np.arange(5 * 2 * 3 * 1, dtype=np.uint8).reshape(5, 2, 3, 1)
    m = notebook.mosaic(images, per_row=2, gap=1)
    assert m.shape == (3 * 3 - 1, 2 * 4 - 1, 1)
    np.testing.assert_array_equal(m[3:5, 4:7], images[3])
    assert (m[6:8, 4:7] == 255).all()  # the missing sixth image is background


def test_synthetic_image_root_and_fast_mode(monkeypatch):
    im = notebook.synthetic_image(32)
    assert im.shape == (32, 32, 3) and 0 <= im.min() and im.max() <= 1
    np.testing.assert_allclose(im[10, 10], (0.9, 0.15, 0.1))  # the red disc
    assert (notebook.project_root() / "minidit" / "course" / "notebook.py").exists()
    monkeypatch.setenv("MINIDIT_FAST", "1")
    assert notebook.fast_mode()
    monkeypatch.setenv("MINIDIT_FAST", "0")
    assert not notebook.fast_mode()
