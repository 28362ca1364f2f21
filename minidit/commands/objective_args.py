"""The training command's flags for the objectives after DiT (docs/objectives.md): --objective,
--timesteps with --logit-mean/--logit-std, --min-snr-gamma, --prediction; their checks, and the objective,
config change and resume check they lead to. The objectives themselves: minidit.diffusion.
"""
import math

from ..cli import check_positive
from ..diffusion.gaussian import PREDICTIONS
from ..diffusion.objectives import OBJECTIVES, TIMESTEP_SAMPLERS, describe, make_objective


def add_objective_arguments(ap):
    ap.add_argument("--objective", default="ddpm", choices=OBJECTIVES,
                    help="ddpm: the paper's Gaussian diffusion (default); flow: flow matching, velocity "
                         "prediction on a straight path (docs/objectives.md)")
    ap.add_argument("--timesteps", default="uniform", choices=TIMESTEP_SAMPLERS,
                    help="training times: uniform (paper) or logit-normal (t = sigmoid(n), n ~ N(m, s^2))")
    ap.add_argument("--logit-mean", type=float, default=None, help="m of --timesteps logit-normal (default 0)")
    ap.add_argument("--logit-std", type=float, default=None, help="s of --timesteps logit-normal (default 1)")
    ap.add_argument("--min-snr-gamma", type=float, default=None,
                    help="Min-SNR weighting of the ddpm mse term (e.g. 5): min(SNR, gamma) / SNR for eps")
    ap.add_argument("--prediction", default="eps", choices=PREDICTIONS,
                    help="what a ddpm model predicts: eps (the noise, paper), x0 (the image) or v")


def check_objective_arguments(ap, a):
    """ap.error (one line, exit 2) for a bad value or combination of these flags."""
    if a.timesteps != "logit-normal":
        for flag in ("logit_mean", "logit_std"):
            if getattr(a, flag) is not None:
                ap.error(f"--{flag.replace('_', '-')} needs --timesteps logit-normal")
    if a.logit_mean is not None and not math.isfinite(a.logit_mean):
        ap.error(f"--logit-mean must be a finite number, got {a.logit_mean}")
    if a.logit_std is not None:
        check_positive(ap, a, ("logit_std",))
    if a.min_snr_gamma is not None:
        check_positive(ap, a, ("min_snr_gamma",))
        if a.objective != "ddpm":
            ap.error(f"--min-snr-gamma weights the ddpm noise loss; --objective {a.objective} has none")
    if a.prediction != "eps" and a.objective != "ddpm":
        ap.error(f"--prediction {a.prediction} is for --objective ddpm; a flow model predicts its velocity")


def config_overrides(args):
    """What the objective changes in the DiTConfig: a flow model predicts the velocity only."""
    return {"learn_sigma": False} if args.objective == "flow" else {}


def objective_for(args, cfg):
    """The training objective the arguments ask for (minidit.diffusion.objectives)."""
    return make_objective(args.objective, cfg.learn_sigma, args.timesteps,
                          0.0 if args.logit_mean is None else args.logit_mean,
                          1.0 if args.logit_std is None else args.logit_std, args.min_snr_gamma,
                          args.prediction)


def check_resumed_objective(meta, objective):
    """ValueError unless a checkpoint was trained with this objective (checkpoints written before
    there was a choice recorded none: theirs is DiT's)."""
    was = meta.get("objective", {"objective": "ddpm", "timesteps": "uniform"})
    if was != describe(objective):
        raise ValueError(f"--resume: the run was trained with {was}, the arguments ask for {describe(objective)}")


def grid_sampler(args):
    """The sampler of the training command's sample grids: DDPM, or Euler for a flow model."""
    return "euler" if args.objective == "flow" else "ddpm"
