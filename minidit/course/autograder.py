"""The autograder of the exercises (minidit.course.exercises): the repository's own tests, run on a
student edition, turned into one verdict per exercise: passes, not implemented yet, wrong (which
gradient check, which input), or waiting on another exercise it calls.

`grade` runs pytest in a subprocess with the edition first on PYTHONPATH and this module loaded as
a pytest plugin. The plugin records, for each test, which exercise functions it called (a trace
hook) and why it failed: a NotImplementedError from a stub, a gradient check's table
(GradCheckResult.assert_ok), or any other assertion. `diagnose` then blames each failure on the
exercise most likely at fault: among the exercises a failing test called, the ones whose tests fail
most often (a wrong linear_backward also breaks attention's check; attention then waits on it).
"""
import ast
import json
import linecache
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .markers import find_exercises, find_function, is_stub, select

_REPORT_ENV = "MINIDIT_GRADE_REPORT"  # where the plugin writes its records (JSON)


# The pytest plugin (loaded in the subprocess with -p minidit.course.autograder) -------------------------

def pytest_configure(config):
    """Register the recorder when `grade` asked for a report (a plain `pytest -p` does nothing)."""
    if os.environ.get(_REPORT_ENV):
        config.pluginmanager.register(_make_recorder(), "minidit-autograder")


def _make_recorder():
    """A pytest plugin object that records, per test, the exercises called and why it failed."""
    import pytest
    import minidit

    root = Path(minidit.__file__).resolve().parent.parent
    exercises = find_exercises(root)
    by_key = {(str((root / e.file).resolve()), e.name): e.name for e in exercises}
    missing = object()

    class Recorder:
        def __init__(self):
            self.records, self.collect_errors, self.calls, self.tick, self.codes = [], [], {}, 0, {}

        def exercise_of(self, code):
            name = self.codes.get(code, missing)
            if name is missing:
                name = self.codes[code] = by_key.get((os.path.realpath(code.co_filename), code.co_qualname))
            return name

        def trace(self, frame, event, arg):  # sys.settrace: called once per new Python frame
            name = self.exercise_of(frame.f_code)
            if name is not None:
                self.tick += 1
                self.calls[name] = self.tick  # the latest call of each exercise
            return None

        @pytest.hookimpl(wrapper=True)
        def pytest_runtest_call(self, item):
            self.calls = {}
            sys.settrace(self.trace)
            try:
                return (yield)
            finally:
                sys.settrace(None)

        @pytest.hookimpl(wrapper=True)
        def pytest_runtest_makereport(self, item, call):
            rep = yield
            if call.when == "call" or (rep.failed and call.when == "setup"):
                calls = self.calls if call.when == "call" else {}
                rec = dict(nodeid=item.nodeid, file=Path(item.path).relative_to(root).as_posix(),
                           outcome=rep.outcome, calls=calls, kind=None)
                if rep.failed and call.excinfo is not None:
                    rec.update(self.why(item, call.excinfo))
                self.records.append(rec)
            return rep

        def why(self, item, excinfo):
            frames, tb = [], excinfo.tb
            while tb is not None:
                frames.append((tb.tb_frame, tb.tb_lineno))
                tb = tb.tb_next
            if isinstance(excinfo.value, NotImplementedError):
                for frame, _ in reversed(frames):
                    if (name := self.exercise_of(frame.f_code)) is not None:
                        return dict(kind="notimpl", notimpl=name)
            for frame, _ in reversed(frames):
                res = frame.f_locals.get("self")
                if frame.f_code.co_name == "assert_ok" and hasattr(res, "rows") and hasattr(res, "tol"):
                    bad = [r[0] for r in res.rows if r[3] > res.tol]
                    return dict(kind="gradcheck", what=str(frame.f_locals.get("what", "gradient check")),
                                bad=bad, worst=max(r[3] for r in res.rows), tol=res.tol, table=str(res))
            where = source = raised_in = ""
            for frame, lineno in frames:
                if os.path.realpath(frame.f_code.co_filename) == os.path.realpath(item.path):
                    where = f"{Path(item.path).relative_to(root).as_posix()}:{lineno}"
                    source = linecache.getline(frame.f_code.co_filename, lineno).strip()
                elif self.exercise_of(frame.f_code) is not None and not isinstance(excinfo.value, AssertionError):
                    path = Path(os.path.realpath(frame.f_code.co_filename)).relative_to(root).as_posix()
                    raised_in = (f"{excinfo.type.__name__} raised in {self.exercise_of(frame.f_code)} at "
                                 f"{path}:{lineno}: {linecache.getline(frame.f_code.co_filename, lineno).strip()}")
            lines = [ln[:160] for ln in excinfo.exconly(tryshort=True).splitlines() if ln.strip()]
            return dict(kind="other", where=where, source=source, raised_in=raised_in,
                        error=excinfo.type.__name__, message="\n".join(lines[:6]))

        def pytest_collectreport(self, report):
            if report.failed:
                text = str(report.longrepr).strip().splitlines()
                self.collect_errors.append(dict(nodeid=report.nodeid, message="\n".join(text[-8:])))

        def pytest_sessionfinish(self, session):
            with open(os.environ[_REPORT_ENV], "w") as f:
                json.dump(dict(package=str(Path(minidit.__file__).resolve()), records=self.records,
                               collect_errors=self.collect_errors), f)

    return Recorder()


# Verdicts ----------------------------------------------------------------------------------

@dataclass
class Verdict:
    """The autograder's word on one exercise: kind is pass, todo, wrong, waiting, untested or error."""
    kind: str
    summary: str
    details: list = field(default_factory=list)


def _short(nodeid):
    return nodeid.split("::", 1)[-1]


def _why_wrong(rec):
    if rec["kind"] == "gradcheck":
        inputs = ", ".join(repr(b) for b in rec["bad"])
        return (f"WRONG gradient for input {inputs} in check {rec['what']!r}",
                [f"{rec['nodeid']}: gradient check {rec['what']!r} is wrong for {inputs} "
                 f"(max rel error {rec['worst']:.1e}, tolerance {rec['tol']:.0e}):",
                 *("    " + ln for ln in rec["table"].splitlines())])
    what = "value" if rec["error"] == "AssertionError" else rec["error"]
    return (f"WRONG {what} in {_short(rec['nodeid'])}",
            [f"{rec['nodeid']} fails at {rec['where']}: {rec['source']}",
             *(["  " + rec["raised_in"]] if rec["raised_in"] else []),
             *("    " + ln for ln in rec["message"].splitlines())])


def diagnose(exercises, records, stubs=(), collect_errors=()):
    """One Verdict per exercise from the test records. `stubs`: exercises whose body is still a stub.

    A failure with a NotImplementedError is the stub's. Any other failure is blamed on the
    exercises it called that fail most often over all tests (ties kept; for a non-gradient check,
    the one called last); failures are taken from the fewest suspects up, and one whose suspects
    include an exercise already blamed is explained by it: the others called there wait on it.
    """
    records = [dict(r) for r in records]  # annotated below with their suspects and blame
    failing = [r for r in records if r["outcome"] == "failed"]
    todo = set(stubs) | {r["notimpl"] for r in failing if r["kind"] == "notimpl"}
    ran, failed = Counter(), Counter()
    for r in records:
        if r["outcome"] == "passed" or (r["outcome"] == "failed" and r["kind"] != "notimpl"):
            ran.update(list(r["calls"]))  # count the tests, not the call ticks
            failed.update(list(r["calls"]) if r["outcome"] == "failed" else [])
    for r in failing:
        if r["kind"] == "notimpl":
            r["blame"] = [r["notimpl"]]
            continue
        calls = {n: t for n, t in r["calls"].items() if n not in todo}
        ratio = {n: failed[n] / ran[n] for n in calls}
        sus = [n for n in calls if ratio[n] == max(ratio.values())] if calls else []
        if r["kind"] != "gradcheck" and len(sus) > 1:
            sus = [max(sus, key=calls.get)]
        r["suspects"] = sorted(sus, key=calls.get)
    blamed = {}
    for r in sorted((r for r in failing if r["kind"] != "notimpl"), key=lambda r: len(r["suspects"])):
        known = [n for n in r["suspects"] if n in blamed]
        r["blame"] = known or r["suspects"]
        for n in [] if known else r["suspects"]:
            blamed.setdefault(n, []).append(r)
    bad_files = {e["nodeid"].split("::")[0]: e["message"] for e in collect_errors}
    verdicts = {}
    for ex in exercises:
        used = [r for r in records if ex.name in r["calls"]]
        n_pass = sum(r["outcome"] == "passed" for r in used)
        if ex.name in todo:
            v = Verdict("todo", "not implemented yet",
                        [f"not implemented yet: {ex.name} ({ex.section}) in {ex.file}:{ex.line}"
                         + (f", graded by {', '.join(ex.tests)}" if ex.tests else "")])
        elif ex.name in blamed:
            first = blamed[ex.name][0]
            summary, details = _why_wrong(first)
            also = [_short(r["nodeid"]) + (f" ({', '.join(map(repr, r['bad']))})" if r["kind"] == "gradcheck" else "")
                    for r in failing if ex.name in r.get("blame", ()) and r is not first]
            if others := [n for n in first["blame"] if n != ex.name]:
                details.append(f"  that check also calls {', '.join(others)}: the bug may be there "
                               "(grade them too to tell which)")
            if also:
                details.append(f"  also failing because of it: {', '.join(also)}")
            v = Verdict("wrong", summary, details)
        elif hit := ([r for r in failing if ex.name in r["calls"]] if used else
                     [r for r in failing if r["file"] in ex.tests and r["kind"] == "notimpl"]):
            on = sorted({n for r in hit for n in r.get("blame", []) if n != ex.name})
            tests = f"{', '.join(_short(r['nodeid']) for r in hit[:3])}{', ...' if len(hit) > 3 else ''}"
            v = Verdict("waiting", f"waiting on {', '.join(on) or 'a failing test'}",
                        [f"{ex.name}: {len(hit)} of the {len(used)} tests that use it fail because of "
                         f"{', '.join(on) or 'other code'} ({tests})" if used else
                         f"{ex.name}: not reached yet; {tests} stop at {', '.join(on)}"])
        elif n_pass:
            v = Verdict("pass", f"passes ({n_pass} test{'s' if n_pass > 1 else ''})")
        elif errs := [f for f in ex.tests if f in bad_files]:
            v = Verdict("error", f"{errs[0]} does not import", [f"{errs[0]}:", *bad_files[errs[0]].splitlines()])
        else:
            v = Verdict("untested", "no test called it",
                        [f"{ex.name}: no test in {', '.join(ex.tests) or 'tests/'} called it"])
        verdicts[ex.name] = v
    return verdicts


# Running and reporting ----------------------------------------------------------------------

@dataclass
class GradeReport:
    verdicts: dict
    text: str
    exit_code: int
    pytest_output: str = ""


def _format(edition, chosen, verdicts, records, collect_errors, seconds):
    w = max([8] + [len(e.name) for e in chosen])
    s = max([13] + [len(e.section) for e in chosen])
    n_run = sum(r["outcome"] != "skipped" for r in records)
    lines = [f"minidit autograder: {edition} ({n_run} tests run in {seconds:.1f} s)", "",
             f"{'exercise':<{w}}  {'paper section':<{s}}  status", f"{'-' * w}  {'-' * s}  {'-' * 40}"]
    lines += [f"{e.name:<{w}}  {e.section:<{s}}  {verdicts[e.name].summary}" for e in chosen]
    n_ok = sum(v.kind == "pass" for v in verdicts.values())
    lines += ["", f"{n_ok} of {len(chosen)} exercises pass."]
    groups = [("wrong", "Wrong (fix these first; the table lists every checked input):", True),
              ("error", "Cannot be graded:", True),
              ("todo", "Not implemented yet (write the body, then grade again):", False),
              ("waiting", "Waiting (their tests also use an exercise above):", False),
              ("untested", "Not reached by any test:", False)]
    for kind, title, spaced in groups:
        vs = [verdicts[e.name] for e in chosen if verdicts[e.name].kind == kind]
        if vs:
            lines += ["", title]
            for v in vs:
                lines += ([""] if spaced and v is not vs[0] else []) + ["  " + d for d in v.details]
    stray = [r for r in records if r["outcome"] == "failed" and not r["calls"]]
    if stray or collect_errors:
        lines += ["", "Failures not tied to an exercise:"]
        lines += [f"  {r['nodeid']}: {r.get('message', '').splitlines()[0] if r.get('message') else r['kind']}"
                  for r in stray]
        lines += [f"  {c['nodeid']}: {c['message'].splitlines()[-1] if c['message'] else 'error'}"
                  for c in collect_errors]
    return "\n".join(lines)


def grade(edition, names=None, verbose=False, stream=None):
    """Run the tests of the chosen exercises (default all) on an edition and print the verdicts.

    Only the test files that grade the chosen exercises run (Exercise.tests: tests/test_linear.py
    for linear_backward, ...). Returns a GradeReport; exit_code is 0 when every chosen exercise
    passes, 1 otherwise, 2 when pytest could not run at all.
    """
    stream = sys.stdout if stream is None else stream
    edition = Path(edition).resolve()
    try:
        exercises = find_exercises(edition)
    except SyntaxError as e:
        text = f"minidit autograder: {e.filename} line {e.lineno} does not parse: {e.msg}"
        print(text, file=stream)
        return GradeReport({}, text, 1)
    chosen = select(exercises, names)
    files = sorted({f for e in chosen for f in e.tests})
    stubs = {e.name for e in exercises
             if is_stub(find_function(ast.parse((edition / e.file).read_text()), e.name))}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        path = [str(edition)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        # MINIDIT_FUSED=0: on a GPU the student's body runs, not the library's fused kernel
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONDONTWRITEBYTECODE="1",
                   MINIDIT_FUSED="0", **{_REPORT_ENV: str(report)})
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "minidit.course.autograder",
               "-q", "--tb=short", "--continue-on-collection-errors", f"--rootdir={edition}", *files]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=edition, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        output = proc.stdout + proc.stderr
        if not report.exists():
            text = f"minidit autograder: pytest did not run the tests in {edition}:\n{output[-4000:]}"
            print(text, file=stream)
            return GradeReport({}, text, 2, output)
        data = json.loads(report.read_text())
    if not data["package"].startswith(str(edition) + os.sep):
        raise RuntimeError(f"the tests imported minidit from {data['package']}, not from {edition}")
    verdicts = diagnose(exercises, data["records"], stubs, data["collect_errors"])
    verdicts = {e.name: verdicts[e.name] for e in chosen}
    text = _format(edition, chosen, verdicts, data["records"], data["collect_errors"], seconds)
    if verbose:
        print(output, file=stream)
    print(text, file=stream)
    ok = all(v.kind == "pass" for v in verdicts.values())
    return GradeReport(verdicts, text, 0 if ok else 1, output)

