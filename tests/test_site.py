"""The course site (minidit/course/site.py): every notebook has an executed copy in lessons/
that belongs to its current cells, ran in the full mode and shows figures; the site built from
them holds the README, every docs page and every lesson; every internal link and image resolves;
and a headless Chromium opens every page and sees each lesson's images rendered."""
import functools
import http.server
import json
import threading
from pathlib import Path

import pytest

from minidit.course import site
from conftest import summary

NOTEBOOKS = sorted(site.NOTEBOOKS.glob("*.ipynb"))
EXECUTED = sorted(site.LESSONS.glob("*.ipynb"))
NO_COPIES = "lessons/ holds no executed lesson yet: run python -m minidit.course.site execute"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


pytestmark = pytest.mark.xdist_group("site")  # its module-scoped fixtures are built once, on one worker

def _read(path):
    return json.loads(Path(path).read_text())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_executed_copy_is_current_full_and_has_figures(path):
    if not EXECUTED:
        pytest.skip(NO_COPIES)
    copy = site.LESSONS / path.name
    assert copy.exists(), f"{path.name} has no executed copy: python -m minidit.course.site execute {path.stem}"
    stamp = _read(copy)["metadata"].get("minidit", {})
    assert stamp.get("source_hash") == site.cells_hash(_read(path)), \
        f"lessons/{path.name} was executed from other cells: python -m minidit.course.site execute {path.stem}"
    assert stamp.get("mode") == "full", f"lessons/{path.name} ran in {stamp.get('mode')} mode, not full"
    assert site.image_outputs(_read(copy)) > 0, f"lessons/{path.name} shows no figure"


def test_no_executed_copy_without_its_notebook():
    assert {p.name for p in EXECUTED} <= {p.name for p in NOTEBOOKS}


def test_the_hash_sees_code_not_outputs():
    nb = _read(NOTEBOOKS[0])
    h = site.cells_hash(nb)
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x"}]
    code["execution_count"] = 7
    assert site.cells_hash(nb) == h
    code["source"] = "".join(code["source"]) + " "
    assert site.cells_hash(nb) != h


def test_the_link_check_finds_broken_links(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "pic.png").write_bytes(b"png")
    (tmp_path / "a" / "p.html").write_text(
        '<a href="../index.html#top">ok</a><a href="#here">ok</a><a href="https://x.org/y">ok</a>'
        '<img src="../pic.png"><img src="../_images/gone.png"><a href="q.html">no</a><a href="../../out.html">no</a>')
    (tmp_path / "index.html").write_text('<a href="a/p.html">ok</a>')
    assert site.check_links(tmp_path) == [("a/p.html", "../_images/gone.png"), ("a/p.html", "q.html"),
                                          ("a/p.html", "../../out.html")]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    pytest.importorskip("sphinx", reason="the site needs the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("myst_nb", reason="the site needs the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site") / "html"
    warnings = site.build(out)
    return out, warnings


def test_site_holds_readme_docs_and_every_lesson(built):
    out, warnings = built
    assert site.dead_references(warnings) == []
    home = (out / "index.html").read_text()
    title = next(line for line in (site.ROOT / "README.md").read_text().splitlines() if line.startswith("# "))
    assert title[2:].split()[0] in home
    pages = [p.relative_to(site.ROOT / "docs").with_suffix(".html") for p in (site.ROOT / "docs").rglob("*.md")]
    assert (out / "docs" / "teachers_guide.html").exists()
    assert [p for p in pages if not (out / "docs" / p).exists()] == []
    assert [p.stem for p in NOTEBOOKS if not (out / "lessons" / f"{p.stem}.html").exists()] == []
    assert site.check_links(out) == []


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(directory):
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_browser_shows_every_lessons_images(built, tmp_path, capsys):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("no browser: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[docs]' for selenium")
    out, warnings = built
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={tmp_path}"):
        options.add_argument(arg)
    server = _serve(out)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    shown, not_rendered = {}, []
    try:
        driver.set_page_load_timeout(60)
        pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html"))
        for page in pages:
            driver.get(f"http://127.0.0.1:{server.server_port}/{page}")
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
            not_rendered += [(page, src) for src, width in images if not width]
            if page.startswith("lessons/"):
                stem = Path(page).stem  # "07b_scaling_out" -> "07b"; the two 00s: "00" and "00_start"
                key = stem.split("_")[0] + ("_start" if stem == "00_start_here" else "")
                shown[key] = sum(1 for _, width in images if width > 0)
    finally:
        driver.quit()
        server.shutdown()
    broken = site.check_links(out) + site.dead_references(warnings)
    with capsys.disabled():
        summary("course site", f"site: {len(pages)} pages opened, images shown per lesson: "
              + ", ".join(f"{k}={v}" for k, v in shown.items()) + f", broken links {len(broken)}")
    assert not not_rendered and not broken, (not_rendered, broken)
    if not EXECUTED:
        pytest.skip(NO_COPIES + " (every page opened; the lessons' figures not checked)")
    assert len(shown) == len(NOTEBOOKS)
    assert not [k for k, v in shown.items() if v == 0], f"lesson pages that show no image: {shown}"


@pytest.mark.parametrize("argv", [["build", "--out", "{tmp}"], ["execute", "no_such_lesson"], ["check", "{tmp}"]])
def test_bad_input_exits_2_and_writes_nothing(argv, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")  # a folder that is not a site build
    with pytest.raises(SystemExit) as e:
        code = site.main([a.format(tmp=tmp_path) for a in argv])
        raise SystemExit(code)
    assert e.value.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert not list(site.LESSONS.glob(".*.tmp"))
