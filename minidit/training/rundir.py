"""The folder of one training run, shared by every training command (DiT, VAE, classifier).

    out/checkpoints/step_0001000.npz   the newest `keep` checkpoints (minidit.training.checkpoint)
    out/log.jsonl                      one JSON record per logged step, each step once, in order
    out/loss.png                       the logged losses against the step
    out/...                            what the command adds (samples/, vae.npz, classifier.npz)
    out/.minidit.lock                  while a run uses the folder: its process id

The promises (README, "Run directories"): a folder that holds a run is never reused by accident
(--resume continues it, --overwrite starts over); --overwrite deletes only files a run writes and
refuses a folder that holds anything else; nothing is created or deleted before the command's
inputs have been checked; a second run on the same folder stops at once; a checkpoint is written
only when every weight in it is finite; a resumed run forgets the log records written after its
checkpoint; the temporary files of a write interrupted by a kill are removed at the next start.
"""
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np

from ..cli import CommandFailed, TrainingDiverged, is_temporary
from .checkpoint import checkpoints_of, non_finite, save_checkpoint
from .viz import plot_loss_curve, read_log

LOCK = ".minidit.lock"


def _is_ours(path, outputs):
    """Whether a top-level entry of a run folder is something a run of ours writes."""
    name = path.name
    if name == LOCK or is_temporary(name) or (name in outputs and not path.is_dir()):
        return True
    if name == "checkpoints" and path.is_dir():
        return all(p.is_file() and ((p.name.startswith("step_") and p.suffix == ".npz") or is_temporary(p.name))
                   for p in path.iterdir())
    if name == "samples" and path.is_dir():
        return all(p.is_file() and ((p.name.startswith("step_") and p.suffix == ".png") or is_temporary(p.name))
                   for p in path.iterdir())
    return False


def _owner(lock):
    """(pid, host) recorded in a lock file, or None when it cannot be read."""
    try:
        d = json.loads(lock.read_text())
        return int(d["pid"]), str(d["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid, host):
    if host != socket.gethostname():
        return True  # another machine's process: we cannot tell, so we assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    """One run's folder. `RunDir(out, resume, overwrite)` checks the request against what is on
    disk and raises FileExistsError, FileNotFoundError or ValueError with the flag to use;
    `start(step)` then takes the lock and prepares the folder, once the command has checked its
    other inputs; `close()` releases the lock."""

    RUN_FILES = ("checkpoints", "log.jsonl", "loss.png", "samples")

    def __init__(self, out, resume=False, overwrite=False, keep=2, outputs=()):
        if resume and overwrite:
            raise ValueError("--resume and --overwrite contradict each other")
        if keep < 1:
            raise ValueError(f"--keep must be positive, got {keep}")
        self.path = Path(out)
        self.resume, self.overwrite, self.keep = resume, overwrite, keep
        self.outputs = tuple(self.RUN_FILES) + tuple(outputs)  # what --overwrite may delete
        self._locked = False
        for parent in [self.path, *self.path.resolve().parents]:
            if parent.exists():
                if not parent.is_dir():
                    raise FileExistsError(f"--out {self.path}: {parent} is a file, not a folder")
                if not os.access(parent, os.W_OK):
                    raise PermissionError(13, "the folder is not writable", str(parent))
                break
        self._check_lock()
        existing = checkpoints_of(self.path)
        if existing and not resume and not overwrite:
            raise FileExistsError(f"{self.path} already holds a run ({existing[-1].name}); pass --resume "
                                  "to continue it or --overwrite to start over")
        if resume and not existing:
            raise FileNotFoundError(f"--resume: {self.path} holds no checkpoint to resume from")
        if overwrite and self.path.is_dir():
            foreign = sorted(p.name for p in self.path.iterdir() if not _is_ours(p, self.outputs))
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise FileExistsError(f"--overwrite: {self.path} holds files a minidit run did not write "
                                      f"({shown}); move them, or choose another --out")
        self.resume_from = existing[-1] if resume else None
        self.last_checkpoint = self.resume_from

    @property
    def log_path(self):
        return self.path / "log.jsonl"

    @property
    def lock_path(self):
        return self.path / LOCK

    def _check_lock(self):
        """FileExistsError when a live process holds the folder's lock."""
        if self.lock_path.exists():
            owner = _owner(self.lock_path)
            if owner is not None and owner[0] != os.getpid() and _alive(*owner):
                raise FileExistsError(f"{self.path} is in use by another run (process {owner[0]} on "
                                      f"{owner[1]}); if no run is active there, delete {self.lock_path}")

    def start(self, step=0):
        """Take the lock; with --overwrite delete the previous run's files; remove the temporary
        files of interrupted writes; keep only the log records up to `step` (the resumed
        checkpoint's; 0 for a new run)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._check_lock()  # a stale lock (its process is gone) is taken over below
        self.lock_path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        self._locked = True
        if self.overwrite:
            for name in self.outputs:
                p = self.path / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        for folder in (self.path, self.path / "checkpoints", self.path / "samples"):
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.is_file() and is_temporary(p.name):
                        p.unlink()
        if self.log_path.exists():
            keep = [r for r in read_log(self.log_path) if r.get("step", 0) <= step]
            self.log_path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        return self

    def close(self):
        """Release the lock (the run is over, finished or not)."""
        if self._locked:
            owner = _owner(self.lock_path)
            if owner is not None and owner[0] == os.getpid():
                self.lock_path.unlink()
            self._locked = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def log(self, record):
        """Append one record (a JSON-able dict with a "step") to log.jsonl."""
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def save(self, step, meta, **groups):
        """Write checkpoints/step_<step>.npz atomically, then delete all but the newest `keep`.

        Raises TrainingDiverged, writing nothing, when a weight is not finite (so every checkpoint
        on disk is one to resume or sample from), and CommandFailed when the write fails (a full
        disk): the previous checkpoints are kept either way."""
        bad = non_finite(groups)
        if bad is not None:
            raise TrainingDiverged(f"the weights became non-finite by step {step} ({bad}); nothing was written "
                                   f"and the newest checkpoint, {self._newest()}, is finite")
        target = self.path / "checkpoints" / f"step_{step:07d}.npz"
        try:
            path = save_checkpoint(target, dict(meta, step=step), **groups)
        except OSError as e:
            raise self.write_failed(e, f"the checkpoint {target}") from e
        for old in checkpoints_of(self.path)[:-self.keep]:
            old.unlink()
        self.last_checkpoint = path
        return path

    def _newest(self):
        return self.last_checkpoint or "none (none written yet)"

    def write_failed(self, e, what):
        """The CommandFailed error for an OSError (a full disk...) while writing `what`."""
        return CommandFailed(f"could not write {what}: {e.strerror or e}; the newest checkpoint is {self._newest()}")

    def diverged(self, step, stats):
        """The TrainingDiverged error for a non-finite loss at `step`, naming the newest checkpoint."""
        return TrainingDiverged(f"loss became {stats['loss']} at step {step} (grad norm {stats['grad_norm']}); "
                                f"the newest checkpoint is {self._newest()}")

    def interrupted(self, e, step):
        """The same interrupt (KeyboardInterrupt or Terminated), saying where the run stopped."""
        why = "terminated" if type(e).__name__ == "Terminated" else "interrupted"
        return type(e)(f"{why} at step {step}; the newest checkpoint is {self._newest()} "
                       f"(continue with --resume)")

    def plot_loss(self, title, keys=("loss", "mse", "vb")):
        """loss.png from log.jsonl (nothing to draw before the first log record)."""
        try:
            return plot_loss_curve(self.log_path, self.path / "loss.png", title=title, keys=keys)
        except OSError as e:
            raise self.write_failed(e, self.path / "loss.png") from e


def check_resumable(meta, groups, path):
    """ValueError unless a checkpoint to resume from holds finite weights."""
    bad = non_finite(groups)
    if bad is not None:
        raise ValueError(f"--resume: {path} holds non-finite weights ({bad}); resume from an earlier checkpoint")


def add_run_arguments(ap, out, log_every=25, ckpt_every=500, required=False):
    """The flags of a run directory, the same on every training command."""
    ap.add_argument("--out", default=None if required else out, required=required,
                    help=f"run directory{'' if required else f' (default {out})'}")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    ap.add_argument("--overwrite", action="store_true",
                    help="delete the run in --out (only the files a run writes) and start over")
    ap.add_argument("--log-every", type=int, default=log_every,
                    help="steps between log.jsonl records" + ("" if log_every else " (default: steps / 100)"))
    ap.add_argument("--ckpt-every", type=int, default=ckpt_every, help="steps between checkpoints")
    ap.add_argument("--keep", type=int, default=2, help="checkpoints to keep (the newest)")


def training_state(opt, rng, loader):
    """(meta entries, array groups) that make a run resume bit for bit: the optimiser's step and
    moments, the random generator's state, the data stream's epoch, position and order."""
    state = loader.state_dict()
    meta = {"rng": rng.get_state(), "opt_step": opt.step_count,
            "loader": {k: v for k, v in state.items() if k != "order"}}
    groups = {"opt_m": opt.m, "opt_v": opt.v}
    if state["order"] is not None:
        groups["loader"] = {"order": np.asarray(state["order"])}
    return meta, groups


def restore_training_state(meta, groups, opt, rng, loader):
    """Put back what training_state saved (the model's own weights are the caller's)."""
    opt.load_state_dict({"step": meta["opt_step"], "m": groups["opt_m"], "v": groups["opt_v"]})
    rng.set_state(meta["rng"])
    loader.load_state_dict({**meta["loader"], "order": groups.get("loader", {}).get("order")})
