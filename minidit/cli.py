"""What every minidit command (python -m minidit.<command>) promises its user, written once.

- Bad input (a flag out of range, a missing or damaged file, a path that cannot be written) is
  one line naming the problem and exit status 2, found before anything is written.
- A run that started and could not finish (a diverged loss, a full disk) is one line and status 1.
- Ctrl-C (SIGINT) and SIGTERM stop the command with one line saying where it stopped: 130 / 143.
- Files are written whole or not at all (`atomic_write`): a reader never sees half a file.
- Nothing a user owns is touched: a command writes only into a new or empty folder or one that
  holds its own earlier output (minidit/training/rundir.py), and a path with a folder in it is
  never replaced by a shipped file of the same name (minidit/training/checkpoint.py).
`run_command` applies these rules around a command's work; the checks below run before it. It
also makes the process keep the memory it frees for reuse (minidit.backend.keep_freed_memory),
which spares a training step the kernel's work of handing out fresh pages.
"""
import argparse
import contextlib
import math
import os
import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path

from . import end_loading_guard
from .backend import keep_freed_memory

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143


class CommandParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints `prog: error: message` on one line and exits with
    status 2, without the usage dump, so the message that names the problem is what a user sees."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


class CommandFailed(RuntimeError):
    """The command started and could not finish (exit 1); the message says why and what is kept."""


class TrainingDiverged(CommandFailed):
    """The loss or the weights became NaN or infinite; the message names the step and the newest
    checkpoint, whose weights are finite."""


class OutOfMemory(MemoryError):
    """Memory ran out, with the advice that fits where (the dataset, a batch...): the message
    names the flag to lower."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that one handler stops the work."""


def check_positive(ap, args, names):
    """ap.error naming the flag unless every args.<name> is a positive, finite number."""
    for name in names:
        v = getattr(args, name)
        if not (v > 0 and math.isfinite(v)):
            ap.error(f"--{name.replace('_', '-')} must be positive, got {v}")


def check_range(ap, args, name, low, high=math.inf, high_open=False):
    """ap.error naming the flag unless low <= args.<name> <= high (< high when high_open)."""
    v = getattr(args, name)
    if v is None:
        return
    inside = math.isfinite(v) and low <= v and (v < high if high_open else v <= high)
    if not inside:
        upper = "" if high == math.inf else (f", {high})" if high_open else f", {high}]")
        span = f"[{low}{upper}" if upper else f">= {low}"
        ap.error(f"--{name.replace('_', '-')} must be {'in ' + span if upper else span}, got {v}")


# atomic_write's temporary name: "." + name + "." + 8 random characters + ".tmp" + suffix
def temporary_name(name, suffix):
    return f".{name}.XXXXXXXX.tmp{suffix}"


def name_max(folder):
    """The longest file name (in bytes) the file system of `folder` (or of its nearest existing
    parent) accepts."""
    for parent in [Path(folder), *Path(folder).resolve().parents]:
        if parent.exists():
            try:
                return os.pathconf(parent, "PC_NAME_MAX")
            except (OSError, ValueError, AttributeError):
                return 255
    return 255


def check_name_fits(ap, flag, path):
    """ap.error unless the file name of `path` fits the file system with the temporary suffix
    atomic_write adds while it writes (a name that fits alone may not fit then)."""
    p = Path(path)
    longest = name_max(p.parent)
    need = len(os.fsencode(temporary_name(p.name, p.suffix)))
    if need > longest:
        room = longest - (need - len(os.fsencode(p.name)))
        ap.error(f"{flag} {path}: the file name is too long ({len(os.fsencode(p.name))} bytes; at most {room} "
                 f"here, as the write goes through a temporary name {need - len(os.fsencode(p.name))} bytes longer)")


def check_output_file(ap, flag, path, suffixes):
    """ap.error unless `path` can become a file with one of `suffixes`: not a folder, a parent
    that is a folder or can be made one, a name that fits with the temporary suffix. Checked
    before any work, so nothing is computed for an output that cannot be written."""
    if not str(path):
        ap.error(f"{flag} is empty; give a file name ending in {' or '.join(suffixes)}")
    p = Path(path)
    if p.is_dir() or str(path).endswith(("/", os.sep)):
        ap.error(f"{flag} {path} is a folder; give a file name ending in {' or '.join(suffixes)}")
    if p.suffix.lower() not in suffixes:
        ap.error(f"{flag} {path}: the file name must end in {' or '.join(suffixes)}")
    check_name_fits(ap, flag, path)
    for parent in p.resolve().parents:
        if parent.exists():
            if not parent.is_dir():
                ap.error(f"{flag} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                ap.error(f"{flag} {path}: the folder {parent} is not writable")
            break


def check_output_folder(ap, flag, path):
    """ap.error for an empty folder name (which would mean the current folder) or one whose name
    the file system cannot hold."""
    if path is None:
        return
    if not str(path).strip():
        ap.error(f"{flag} is empty; name the folder to write into (use {flag} . for the current folder)")
    for part in Path(path).parts:
        if len(os.fsencode(part)) > name_max(Path(path).parent):
            ap.error(f"{flag} {path}: the name {part[:40]}... is too long for the file system")


def check_plotting(ap):
    """ap.error when MPLBACKEND names no matplotlib backend: the pictures are drawn with Agg, but
    importing matplotlib fails on such a value, which would otherwise surface after the work."""
    backend = os.environ.get("MPLBACKEND")
    if not backend:
        return
    try:
        from matplotlib import rcsetup
        rcsetup.validate_backend(backend)
    except ImportError:
        return  # no matplotlib: the command names its install when it needs it
    except ValueError:
        ap.error(f"MPLBACKEND={backend!r} is not a matplotlib backend; unset it or set MPLBACKEND=Agg "
                 "(the commands draw their pictures with Agg)")


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path beside `path` (same suffix, so writers that choose the format by
    extension work) and rename it over `path` once the block finishes; on any error or
    interrupt the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; an output is an ordinary file
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def is_temporary(name):
    """True for the name of a file atomic_write left behind when its process was killed
    (".step_0000500.npz.k3j2.tmp.npz"; earlier versions wrote "step_0000500.npz.k3j2.tmp")."""
    return ".tmp" in name and (name.startswith(".") or name.endswith(".tmp"))


def _describe(e):
    """One line for an exception: OS errors name the file and the cause."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    return str(e) or type(e).__name__


@contextlib.contextmanager
def _sigterm_as_exception():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_FLOAT_WARNINGS = r"(overflow|invalid value|divide by zero|underflow) encountered"


def _printable_streams():
    """Make stdout and stderr print any name (a folder name the terminal's encoding cannot show
    comes out with backslash escapes instead of failing after the work)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")


def _interrupt_handled():
    """Tell CPython that the KeyboardInterrupt it raised has been dealt with. When Ctrl-C lands
    while code compiled from a string runs (exec of a string: namedtuple and dataclass creation
    do it, so a lazy import of matplotlib can be in one), CPython 3.11 marks the interrupt as
    unhandled as it leaves that code, even though we catch it further up; a `python -m` command
    then kills itself with SIGINT at exit (status -2) instead of returning our 130. The next
    exec of a string clears that mark."""
    exec("pass")


def run_command(ap, run, argv=None, validate=None, out_of_memory="lower the batch or the number of images",
                plots=True):
    """Parse and validate the arguments, then run(args) under the rules of this module. Returns
    the exit status: run's own when it returns an int (the autograder's verdict), else 0 when
    the work is done; bad arguments exit 2 through ap.error. plots: the command draws pictures,
    so MPLBACKEND is checked first. NumPy's floating-point warnings are silenced: a command that
    checks its numbers (a diverging run) says what went wrong in its one line instead."""
    try:
        end_loading_guard()  # from here on, Ctrl-C is a KeyboardInterrupt handled below
        _printable_streams()
        args = ap.parse_args(argv)
        if plots:
            check_plotting(ap)
        if validate is not None:
            validate(ap, args)
    except KeyboardInterrupt:  # Ctrl-C while the arguments were read (or the imports ran)
        _interrupt_handled()
        print(f"{ap.prog}: interrupted before it started; nothing was written", file=sys.stderr)
        return EXIT_SIGINT
    keep_freed_memory()
    with _sigterm_as_exception(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_FLOAT_WARNINGS, category=RuntimeWarning)
        try:
            status = run(args)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as Terminated
            _interrupt_handled()
            why = str(e) or "interrupted"
            print(f"{ap.prog}: {why}", file=sys.stderr)
            return EXIT_SIGTERM if isinstance(e, Terminated) else EXIT_SIGINT
        except CommandFailed as e:
            print(f"{ap.prog}: {_describe(e)}", file=sys.stderr)
            return EXIT_FAILED
        except OutOfMemory as e:
            ap.error(f"out of memory: {e}")
        except MemoryError:
            ap.error(f"out of memory: {out_of_memory}")
        except (OSError, ValueError, RuntimeError, ImportError, LookupError) as e:
            ap.error(_describe(e))
    return status if isinstance(status, int) and not isinstance(status, bool) else 0
