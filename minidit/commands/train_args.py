"""The flags of `python -m minidit.train` and their checks, all made before any work starts
(docs/commands.md): the parser and its validation, beside the command in train.py."""
from ..cli import CommandParser, check_output_folder, check_positive, check_range
from ..model import DiT_models
from ..training.optim import LR_SCHEDULES, MUON_RMS, OPTIMIZERS
from ..training.rundir import add_run_arguments
from .objective_args import add_objective_arguments, check_objective_arguments


def build_parser():
    ap = CommandParser(prog="python -m minidit.train", description="Train a class-conditional DiT.")
    ap.add_argument("--model", default="minidit-Tiny/4", help=f"config name ({', '.join(DiT_models)})")
    ap.add_argument("--depth", type=int, default=None, help="override the config's depth")
    ap.add_argument("--hidden-size", type=int, default=None, help="override the config's hidden size")
    ap.add_argument("--num-heads", type=int, default=None, help="override the config's heads")
    ap.add_argument("--patch-size", type=int, default=None, help="override the config's patch size")
    ap.add_argument("--block", default=None, help="block design override (minidit.blocks.BLOCK_DESIGNS)")
    ap.add_argument("--data", default="shapes", help="'shapes' (built in, default), 'mnist' or an image folder")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--num-images", type=int, default=None, help="training images (shapes default 10,000)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000, help="total training steps")
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (paper: 1e-4)")
    ap.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                    help="learning rate over the run: constant (paper), cosine or linear decay to "
                         "--lr-final x lr at the last step")
    ap.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warm-up (paper: 0)")
    ap.add_argument("--lr-final", type=float, default=0.0,
                    help="the decay's last learning rate as a fraction of --lr (default 0)")
    ap.add_argument("--optimizer", default="adamw", choices=tuple(OPTIMIZERS),
                    help="adamw (paper) or muon: Muon for the blocks' weight matrices, AdamW for the rest, "
                         "at the same --lr (docs/objectives.md)")
    ap.add_argument("--muon-rms", type=float, default=None,
                    help="with --optimizer muon: the root-mean-square size of a Muon step as a fraction of "
                         f"--lr (default {MUON_RMS}, about AdamW's; docs/objectives.md)")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (paper: 0)")
    ap.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay (paper: 0.9999)")
    ap.add_argument("--class-dropout", type=float, default=None, help="label dropout (paper: 0.1)")
    add_objective_arguments(ap)
    ap.add_argument("--no-flip", action="store_true", help="turn off random horizontal flips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu (default), gpu or auto")
    ap.add_argument("--workers", type=int, default=0,
                    help="data-parallel workers on the CPU (0: one per CPU, at most 8; 1: none)")
    ap.add_argument("--worker-kind", default="threads", choices=("threads", "processes"),
                    help="what the --workers are: threads of this process (default), or processes on this "
                         "machine (one Python each, so small models are not held back by Python's lock); "
                         "the same numbers to the bit either way")
    add_run_arguments(ap, out="runs/default")
    ap.add_argument("--sample-every", type=int, default=0, help="EMA sample grid every N steps (0: only at the end)")
    ap.add_argument("--no-sample-grid", action="store_true",
                    help="write no sample grids, not even the last (for scripts that score the checkpoints)")
    ap.add_argument("--sample-steps", type=int, default=50, help="DDPM (flow: Euler) steps of the sample grids")
    ap.add_argument("--cfg-scale", type=float, default=4.0, help="guidance scale of the sample grids")
    ap.add_argument("--vae", default=None, help="VAE checkpoint: train DiT on its latents (latent diffusion)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def validate(ap, a):
    """Every flag checked against its range and the others; one line and exit 2 on the first wrong one."""
    check_positive(ap, a, ("steps", "batch_size", "log_every", "ckpt_every", "keep", "image_size",
                           "sample_steps", "lr"))
    for name in ("depth", "hidden_size", "num_heads", "patch_size", "num_images"):
        if getattr(a, name) is not None:
            check_positive(ap, a, (name,))
    check_range(ap, a, "weight_decay", 0)
    check_range(ap, a, "warmup", 0)
    check_range(ap, a, "lr_final", 0, 1)
    check_range(ap, a, "ema_decay", 0, 1, high_open=True)
    check_range(ap, a, "class_dropout", 0, 1, high_open=True)
    check_range(ap, a, "seed", 0)
    check_range(ap, a, "workers", 0)
    check_range(ap, a, "sample_every", 0)
    check_range(ap, a, "cfg_scale", 1)
    check_range(ap, a, "sample_steps", 1, 1000)  # the respacing of the 1000 training timesteps
    check_output_folder(ap, "--out", a.out)
    if a.model not in DiT_models:
        ap.error(f"unknown --model {a.model!r}; choose one of {', '.join(DiT_models)}")
    if a.resume and a.overwrite:
        ap.error("--resume and --overwrite contradict each other")
    check_objective_arguments(ap, a)
    if a.muon_rms is not None:
        if a.optimizer != "muon":
            ap.error(f"--muon-rms sizes Muon's step; --optimizer {a.optimizer} has none")
        check_positive(ap, a, ("muon_rms",))
    elif a.optimizer == "muon":
        a.muon_rms = MUON_RMS  # recorded in the checkpoint, so that a resume compares it
