"""What the minidit commands share: an argument parser whose errors are one clear line, and the
way a training command turns bad input, a diverged loss or success into its exit status."""
import argparse
import math
import sys


class CommandParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints `prog: error: message` on one line and exits with
    status 2, without the usage dump, so the message that names the problem is what a user sees."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class TrainingDiverged(RuntimeError):
    """A training loss became NaN or infinite; the message names the step and the last checkpoint."""


def check_positive(ap, args, names):
    """ap.error naming the flag unless every args.<name> is a positive, finite number."""
    for name in names:
        v = getattr(args, name)
        if not (v > 0 and math.isfinite(v)):
            ap.error(f"--{name.replace('_', '-')} must be positive, got {v}")


def run_command(ap, validate, run, argv=None):
    """Parse, validate and run a training command: exit 2 with one line for bad input, 1 (with
    the step and the last good checkpoint) when the loss diverges, 0 when it finishes."""
    args = ap.parse_args(argv)
    validate(ap, args)
    try:
        run(args)
    except TrainingDiverged as e:
        print(f"{ap.prog}: training stopped: {e}", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        ap.error(str(e))
    return 0
