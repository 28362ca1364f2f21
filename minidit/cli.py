"""What the minidit commands share: an argument parser whose errors are one clear line."""
import argparse


class CommandParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints `prog: error: message` on one line and exits with
    status 2, without the usage dump, so the message that names the problem is what a user sees."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class TrainingDiverged(RuntimeError):
    """A training loss became NaN or infinite; the message names the step and the last checkpoint."""


def checkpoints_of(out):
    """The checkpoints of a run directory, oldest first."""
    from pathlib import Path
    return sorted((Path(out) / "checkpoints").glob("step_*.npz"))


def check_run_dir(out, resume, overwrite):
    """The existing checkpoints of `out`, after refusing to overwrite a run without --resume or
    --overwrite, and to resume a run that has no checkpoint."""
    existing = checkpoints_of(out)
    if existing and not resume and not overwrite:
        raise FileExistsError(f"{out} already holds a run ({existing[-1].name}); pass --resume to "
                              "continue it or --overwrite to start over")
    if resume and not existing:
        raise FileNotFoundError(f"--resume: {out} holds no checkpoint to resume from")
    return existing


def run_command(ap, validate, run, argv=None):
    """Parse, validate and run a training command: exit 2 with one line for bad input, 1 (with
    the step and the last good checkpoint) when the loss diverges, 0 when it finishes."""
    import sys
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
