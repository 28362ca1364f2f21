"""The folder of one training run, shared by every training command (DiT, VAE, classifier).

    out/checkpoints/step_0001000.npz   the newest `keep` checkpoints (minidit.training.checkpoint)
    out/log.jsonl                      one JSON record per logged step, each step once, in order
    out/loss.png                       the logged losses against the step
    out/...                            what the command adds (samples/, vae.npz, classifier.npz)

A run directory that holds a run is never reused by accident: starting again needs --resume
(continue from the newest checkpoint) or --overwrite (start over), and --overwrite deletes only
the files a run writes, never anything else in the folder, and only once the command's inputs
have been checked. A resumed run forgets the log records written after its checkpoint, so a
run killed between a log line and the next checkpoint logs each step exactly once.
"""
import json
import shutil
from pathlib import Path

from .checkpoint import checkpoints_of, save_checkpoint
from .cli import TrainingDiverged
from .viz import plot_loss_curve, read_log


class RunDir:
    """One run's folder. `RunDir(out, resume, overwrite)` checks the request against what is on
    disk (raising FileExistsError or FileNotFoundError with the flag to use); `start(step)`
    then prepares the folder, once the command has validated its other inputs."""

    RUN_FILES = ("checkpoints", "log.jsonl", "loss.png", "samples")

    def __init__(self, out, resume=False, overwrite=False, keep=2, outputs=()):
        if resume and overwrite:
            raise ValueError("--resume and --overwrite contradict each other")
        if keep < 1:
            raise ValueError(f"--keep must be positive, got {keep}")
        self.path = Path(out)
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"--out {self.path} is a file, not a folder")
        self.resume, self.overwrite, self.keep = resume, overwrite, keep
        self.outputs = tuple(self.RUN_FILES) + tuple(outputs)  # what --overwrite may delete
        existing = checkpoints_of(self.path)
        if existing and not resume and not overwrite:
            raise FileExistsError(f"{self.path} already holds a run ({existing[-1].name}); pass --resume "
                                  "to continue it or --overwrite to start over")
        if resume and not existing:
            raise FileNotFoundError(f"--resume: {self.path} holds no checkpoint to resume from")
        self.resume_from = existing[-1] if resume else None
        self.last_checkpoint = self.resume_from

    @property
    def log_path(self):
        return self.path / "log.jsonl"

    def start(self, step=0):
        """Create the folder; with --overwrite delete the previous run's files; keep only the log
        records up to `step` (the resumed checkpoint's; 0 for a new run)."""
        if self.overwrite:
            for name in self.outputs:
                p = self.path / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists():
            keep = [r for r in read_log(self.log_path) if r.get("step", 0) <= step]
            self.log_path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        return self

    def log(self, record):
        """Append one record (a JSON-able dict with a "step") to log.jsonl."""
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def save(self, step, meta, **groups):
        """Write checkpoints/step_<step>.npz atomically, then delete all but the newest `keep`."""
        path = save_checkpoint(self.path / "checkpoints" / f"step_{step:07d}.npz", dict(meta, step=step),
                               **groups)
        for old in checkpoints_of(self.path)[:-self.keep]:
            old.unlink()
        self.last_checkpoint = path
        return path

    def diverged(self, step, stats):
        """The TrainingDiverged error for a non-finite loss at `step`, naming the last good checkpoint."""
        return TrainingDiverged(f"loss became {stats['loss']} at step {step} (grad norm {stats['grad_norm']}); "
                                f"the last good checkpoint is {self.last_checkpoint or 'none (none written yet)'}")

    def plot_loss(self, title, keys=("loss", "mse", "vb")):
        """loss.png from log.jsonl (nothing to draw before the first log record)."""
        return plot_loss_curve(self.log_path, self.path / "loss.png", title=title, keys=keys)


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
        groups["loader"] = {"order": state["order"]}
    return meta, groups


def restore_training_state(meta, groups, opt, rng, loader):
    """Put back what training_state saved (the model's own weights are the caller's)."""
    opt.load_state_dict({"step": meta["opt_step"], "m": groups["opt_m"], "v": groups["opt_v"]})
    rng.set_state(meta["rng"])
    loader.load_state_dict({**meta["loader"], "order": groups.get("loader", {}).get("order")})
