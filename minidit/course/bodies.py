"""Editing one function's body in a source file: the exercise stub a student finds, the reference
body it replaces, and putting either in place, with signature, docstring and marker unchanged.
minidit.course.editions uses it to write a student edition, `restore` to put reference bodies back.
"""
import ast
import textwrap
from pathlib import Path

from .markers import find_function


def _body_span(node, qualname):
    """(first, last, indent): the 1-based lines after the docstring up to the end of the function."""
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    if body[0].lineno == node.lineno:
        raise ValueError(f"{qualname}: the body must start on its own line to be made an exercise")
    first = body[0].end_lineno + 1 if has_doc else body[0].lineno
    return first, node.end_lineno, " " * body[0].col_offset


def get_body(path, qualname):
    """The source lines of a function's body after its docstring (indentation kept)."""
    lines = Path(path).read_text().splitlines(keepends=True)
    first, last, _ = _body_span(find_function(ast.parse("".join(lines)), qualname), qualname)
    return lines[first - 1:last]


def replace_body(path, qualname, body):
    """Replace a function's body after its docstring by `body`: source text at any indent, or lines.

    Signature, docstring, decorators, marker and everything outside the function are unchanged.
    """
    path = Path(path)
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    first, last, indent = _body_span(find_function(ast.parse(text), qualname), qualname)
    # a list of lines (as get_body returns) goes in verbatim; text is re-indented to the body's
    new = "".join(body) if isinstance(body, list) else textwrap.indent(textwrap.dedent(body).lstrip("\n"), indent)
    if not new.endswith("\n"):
        new += "\n"
    path.write_text("".join(lines[:first - 1]) + new + "".join(lines[last:]))


def _literal(s):
    return f'"{s}"' if '"' not in s and "\\" not in s else repr(s)


def stub_body(ex):
    """The body a student finds in place of the reference: a NotImplementedError naming the section."""
    where = f"see the docstring; check it with: python -m minidit.exercises grade . -k {ex.name}"
    return (f"raise NotImplementedError(\n"
            f"    {_literal(f'exercise: implement {ex.name} ')}\n"
            f"    {_literal(f'(paper section {ex.section}); ')}\n"
            f"    {_literal(where)})\n")
