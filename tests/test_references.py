"""Every reference a reader can follow resolves inside the project (issue 26): markdown links (and
images) in the notebooks, the README and every other markdown page point to files that exist and
to headings that exist (GitHub's anchor rule); "docs/paper.md §1.8" and "pitfall 5.5" name a
section of the paper companion that has a heading; and nothing cites the planning files that live
beside the project and that no user ever sees."""
import ast
import io
import json
import re
import tokenize
from pathlib import Path

import pytest
from conftest import summary

ROOT = Path(__file__).resolve().parents[1]
COMPANION = ROOT / "docs" / "paper.md"
# the two planning files, spelled so that this file does not mention them itself
PLANNING = tuple(name + ".md" for name in ("PAPER", "STYLE"))

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"")
SECTION_REF = re.compile(r"docs/paper\.md((?:\s*(?:,|and|to|-|–)?\s*§\s*\d+(?:\.\d+)?)+)")
PITFALL_REF = re.compile(r"\bpitfalls?\s+(\d+\.\d+)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def slug(text):
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed (letters,
    digits, spaces, '-' and '_' stay), each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its words
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _without_fences(text):
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def headings(text):
    """The anchors of a markdown text, duplicates numbered as GitHub does (-1, -2, ...)."""
    seen, anchors = {}, set()
    for line in _without_fences(text).splitlines():
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        anchors.add(base if n == 0 else f"{base}-{n}")
    return anchors


def _notebook_cells(path):
    return json.loads(path.read_text())["cells"]


def markdown_of(path):
    """The markdown a reader sees in a file: a page, or a notebook's markdown cells."""
    if path.suffix == ".ipynb":
        return "\n\n".join("".join(c["source"]) for c in _notebook_cells(path) if c["cell_type"] == "markdown")
    return path.read_text()


def _python_text(source):
    """A Python file's docstrings and comments: the prose in it."""
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(ast.get_docstring(node, clean=False) or "")
    return "\n".join(parts)


def markdown_files():
    skip = {".git", ".ci-venv", ".venv", ".pytest_cache", "node_modules", "_build", "site"}
    return sorted(p for p in ROOT.rglob("*.md") if not skip & set(p.relative_to(ROOT).parts)
                  and not p.relative_to(ROOT).parts[0].endswith(".egg-info"))


def notebook_files():
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def python_files():
    return sorted(p for d in ("minidit", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")
                  if "__pycache__" not in p.parts)


def dead_links(path, text):
    """(target, why) for every markdown link or image in `text` (written in `path`) that does not
    resolve: a file that is missing, or an anchor that names no heading of its target."""
    dead, checked = [], 0
    text = re.sub(r"`[^`\n]*`", "", _without_fences(text))  # inline code is not a link
    for target in LINK.findall(text) + HTML_SRC.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        checked += 1
        file, _, anchor = target.partition("#")
        dest = path if not file else (path.parent / file).resolve()
        if not dest.exists():
            dead.append((target, "no such file"))
        elif anchor and dest.suffix in (".md", ".ipynb") and anchor not in headings(markdown_of(dest)):
            dead.append((target, "no such heading"))
    return dead, checked


def dead_sections(text, anchors):
    """Section numbers in "docs/paper.md §X.Y" and "pitfall 5.N" references that have no heading
    in the companion; and how many were checked."""
    numbers = [n for m in SECTION_REF.finditer(text) for n in re.findall(r"§\s*(\d+(?:\.\d+)?)", m.group(1))]
    numbers += PITFALL_REF.findall(text)
    numbered = {a.split("-")[0] for a in anchors}  # "18-initialisation" -> "18"
    return [n for n in numbers if n.replace(".", "") not in numbered], len(numbers)


def _scan():
    anchors = headings(COMPANION.read_text())
    report = {"checked": 0, "dead": [], "planning": []}
    texts = []
    for p in markdown_files() + notebook_files():
        text = markdown_of(p)
        dead, checked = dead_links(p, text)
        report["checked"] += checked
        report["dead"] += [(str(p.relative_to(ROOT)), t, why) for t, why in dead]
        if p.suffix == ".ipynb":  # a notebook's code cells speak to the reader too (comments, prints)
            text = "\n".join("".join(c["source"]) for c in _notebook_cells(p))
        texts.append((p, text))
    texts += [(p, p.read_text()) for p in python_files()]
    for p, text in texts:
        prose = _python_text(text) if p.suffix == ".py" else text
        dead, checked = dead_sections(prose, anchors)
        report["checked"] += checked
        report["dead"] += [(str(p.relative_to(ROOT)), f"§{n}", "no such section in docs/paper.md") for n in dead]
        if p != Path(__file__).resolve():
            report["planning"] += [(str(p.relative_to(ROOT)), name) for name in PLANNING if name in text]
    return report


def test_every_reference_resolves_and_none_cites_the_planning_files():
    report = _scan()
    summary("references", f"references checked: {report['checked']}, dead: {len(report['dead'])}, "
          f"mentions of the planning file: {len(report['planning'])}")
    assert report["checked"] > 100  # the scan found the references, it did not skip them
    assert not report["dead"], "dead references:\n" + "\n".join(map(str, report["dead"]))
    assert not report["planning"], "files citing a planning document outside the project:\n" + \
        "\n".join(map(str, report["planning"]))


def test_the_companion_keeps_the_numbering_the_references_use():
    anchors = headings(COMPANION.read_text())
    for number in ["0", "1", "2", "3", "4", "5", "6", "7"] + [f"1.{i}" for i in range(1, 11)] + \
            ["2.1", "2.2", "2.3"] + [f"3.{i}" for i in range(1, 7)] + [f"4.{i}" for i in range(1, 5)] + \
            [f"5.{i}" for i in range(1, 14)] + [f"6.{i}" for i in range(1, 5)]:
        assert any(a.split("-")[0] == number.replace(".", "") for a in anchors), number


def test_the_slug_follows_github():
    assert slug("1.8 Initialisation") == "18-initialisation"
    assert slug("3.1 `create_diffusion` and its defaults") == "31-create_diffusion-and-its-defaults"
    assert slug("Open a lesson on a hosted notebook (Colab, Kaggle)") == \
        "open-a-lesson-on-a-hosted-notebook-colab-kaggle"
    assert headings("# A\n## A\n```\n# not a heading\n```\n### A") == {"a", "a-1", "a-2"}


@pytest.mark.parametrize("text, dead", [
    ("see [x](missing.md)", [("missing.md", "no such file")]),
    ("see [x](page.md#nowhere)", [("page.md#nowhere", "no such heading")]),
    ("see [x](page.md#two-words) and ![p](page.md) and [w](https://example.org/x.md)", []),
])
def test_the_link_check_finds_dead_links(tmp_path, text, dead):
    (tmp_path / "page.md").write_text("# Two words\n")
    assert dead_links(tmp_path / "index.md", text)[0] == dead


def test_the_section_check_finds_dead_sections():
    anchors = headings(COMPANION.read_text())
    assert dead_sections("docs/paper.md §1.8, §3.4 and pitfall 5.13", anchors) == ([], 3)
    assert dead_sections("docs/paper.md §1.99; pitfall 5.77", anchors) == (["1.99", "5.77"], 2)
