"""Sampling from a trained minidit checkpoint (docs/paper.md §4.4): respaced DDPM or DDIM, with
classifier-free guidance (minidit.guidance), writing a labelled PNG grid and optionally an .npz
in the format of the ADM evaluation suite (uint8 NHWC images under arr_0, labels under arr_1).
A flow-matching model is sampled by the Euler or Heun ODE solver instead (docs/objectives.md).

    python -m minidit.sample --ckpt runs/tiny --per-class 8 --cfg-scale 4 --out samples.png
"""
import sys
import numpy as np

from ..backend import Generator, device_of, get_array_module, set_device, to_device, to_numpy
from ..cli import (CommandFailed, CommandParser, atomic_write, check_output_file, check_positive, check_range,
                   run_command)
from ..diffusion import LinearFlow, create_diffusion
from ..guidance import make_model_fn
from ..latent.autoencoder import load_vae_decoder
from ..training.checkpoint import find_checkpoint, find_vae, load_model, resolve_input
from ..training.parallel import DataParallel, resolve_workers
from ..training.viz import save_grid, to_uint8


DIFFUSION_SAMPLERS, FLOW_SAMPLERS = ("ddpm", "ddim"), ("euler", "heun")


def prediction_of(meta):
    """What a checkpoint's model predicts for the Gaussian samplers: "eps" (DiT), "x0" or "v"."""
    return meta.get("objective", {}).get("prediction", "eps")


def samplers_for(meta):
    """The samplers that fit a checkpoint's objective, the default first: DDPM/DDIM for the
    Gaussian diffusion (also every checkpoint written before flow matching), Euler/Heun for flow."""
    flow = meta.get("objective", {}).get("objective") == "flow"
    return FLOW_SAMPLERS if flow else DIFFUSION_SAMPLERS


def generate(params, cfg, labels, num_steps=250, sampler="ddpm", guidance_scale=4.0, seed=0,
             device=None, guidance="all", eta=0.0, progress=False, decode=None, workers=0, prediction="eps"):
    """Sample one image per label. Returns model-space images (N, C, H, W) float32 on the host
    (decoded to pixels by `decode` when the model works on autoencoder latents).

    cfg is the model's DiTConfig; guidance_scale >= 1 the classifier-free guidance scale (1: none).
    sampler "ddpm" respaces to `num_steps` ("250" as the paper) and "ddim" uses "ddim<num_steps>";
    "euler" and "heun" integrate a flow-matching model's ODE in `num_steps` steps (Heun calls the
    model twice per step). Which family fits a checkpoint: samplers_for(meta); prediction (what
    the model's first channels predict, for ddpm/ddim): prediction_of(meta).
    All noise comes from Generator(seed), so a seed reproduces the samples on CPU and GPU.
    workers: CPU threads that each run the model on a slice of the batch (0: one per CPU, see
    minidit.training.parallel); the images do not depend on it beyond float32 rounding.
    """
    if sampler not in DIFFUSION_SAMPLERS + FLOW_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(DIFFUSION_SAMPLERS + FLOW_SAMPLERS)}")
    if num_steps < 1:
        raise ValueError(f"number of sampling steps must be positive, got {num_steps}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= cfg.num_classes):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise ValueError(f"class id {int(bad)} is outside [0, {cfg.num_classes})")
    if sampler in DIFFUSION_SAMPLERS:
        respacing = f"ddim{num_steps}" if sampler == "ddim" else str(num_steps)
        diffusion = create_diffusion(respacing, learn_sigma=cfg.learn_sigma, prediction=prediction)
    rng = Generator(seed, device=device)
    y = to_device(labels, device)
    shape = (len(labels), cfg.in_channels, cfg.input_size, cfg.input_size)
    with DataParallel(resolve_workers(workers, max(len(labels), 1), device_of(y))) as parallel:
        # one (guided) model function per worker, for its slice of the labels, built once
        pieces = [(s, make_model_fn(params, cfg, y[s], guidance_scale, guidance)) for s in parallel.shards(len(labels))]

        def model_fn(x, t):
            parts = parallel.each(lambda piece: piece[1](x[piece[0]], t[piece[0]]), pieces)
            return parts[0] if len(parts) == 1 else get_array_module(x).concatenate(parts)

        if sampler in FLOW_SAMPLERS:
            x = LinearFlow().sample_loop(model_fn, shape, num_steps, sampler, rng=rng, progress=progress,
                                         device=device)
        elif sampler == "ddpm":
            x = diffusion.p_sample_loop(model_fn, shape, rng=rng, progress=progress, device=device)
        else:
            x = diffusion.ddim_sample_loop(model_fn, shape, rng=rng, eta=eta, progress=progress, device=device)
    if decode is not None:
        x = decode(x)
    return np.asarray(to_numpy(x), dtype=np.float32)


def build_parser():
    ap = CommandParser(prog="python -m minidit.sample", description="Sample images from a minidit checkpoint.")
    ap.add_argument("--ckpt", required=True, help="checkpoint file or run directory")
    ap.add_argument("--classes", default="all", help="comma-separated class ids, or 'all' (default)")
    ap.add_argument("--per-class", type=int, default=8, help="samples per class (default 8)")
    ap.add_argument("--cfg-scale", type=float, default=4.0, help="guidance scale >= 1 (paper pictures: 4.0)")
    ap.add_argument("--guidance", default="all", choices=["all", "official"],
                    help="guide all noise channels (default) or only channels 0-2 as the official code")
    ap.add_argument("--sampler", default=None, choices=DIFFUSION_SAMPLERS + FLOW_SAMPLERS,
                    help="ddpm (default) or ddim for a diffusion model; euler (default) or heun for a "
                         "flow model (--objective flow)")
    ap.add_argument("--steps", type=int, default=250, help="sampling steps (default 250, as the paper)")
    ap.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    ap.add_argument("--device", default=None, help="cpu (default), gpu or auto")
    ap.add_argument("--out", default="samples.png", help="PNG grid to write")
    ap.add_argument("--npz", default=None, help="also write an ADM-format .npz (arr_0 images, arr_1 labels)")
    ap.add_argument("--vae", default=None, help="VAE checkpoint for a latent model (default: the one "
                                                "recorded in the DiT checkpoint)")
    ap.add_argument("--workers", type=int, default=0,
                    help="CPU threads sharing the batch (0: one per CPU, at most 8)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def parse_classes(text, num_classes):
    if text == "all":
        return list(range(num_classes))
    try:
        ids = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--classes must be 'all' or comma-separated integers, got {text!r}") from None
    if not ids:
        raise ValueError("--classes is empty")
    for c in ids:
        if not 0 <= c < num_classes:
            raise ValueError(f"class id {c} is outside [0, {num_classes}) for this model")
    return ids


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def save_adm_npz(path, images, labels):
    """uint8 images (N, H, W, C) and their labels as the ADM evaluation suite reads them (arr_0,
    arr_1), written whole or not at all."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, arr_0=images, arr_1=np.asarray(labels))
    print(f"wrote {path} (arr_0 {images.shape} uint8, arr_1 labels)")


def _validate(ap, args):
    check_positive(ap, args, ("per_class", "steps"))
    check_range(ap, args, "steps", 1, 1000)  # a respacing of the 1000 training timesteps
    check_range(ap, args, "cfg_scale", 1)
    check_range(ap, args, "eta", 0, 1)
    check_range(ap, args, "seed", 0)
    check_range(ap, args, "workers", 0)
    check_output_file(ap, "--out", args.out, IMAGE_SUFFIXES)  # before any sampling work
    if args.npz is not None:
        check_output_file(ap, "--npz", args.npz, (".npz",))


def run(args):
    """Sample as the parsed arguments say; everything is read and checked before the first step."""
    device = set_device(args.device)
    params, cfg, meta = load_model(args.ckpt, use_ema=not args.raw, device=device)
    classes = parse_classes(args.classes, cfg.num_classes)
    fits = samplers_for(meta)
    sampler = args.sampler or fits[0]
    if sampler not in fits:
        what = "flow" if fits == FLOW_SAMPLERS else "diffusion (ddpm)"
        raise ValueError(f"--sampler {sampler} does not fit this {what} model: use {' or '.join(fits)}")
    decode = None
    if args.vae:  # a bare name may be the shipped VAE; a path with a folder is that path
        args.vae = str(resolve_input(args.vae, "--vae"))
    vae_path = args.vae or (find_vae(meta["vae"], find_checkpoint(args.ckpt)) if meta.get("vae") else None)
    if vae_path:
        decode = load_vae_decoder(vae_path, device=device, latent_scale=meta.get("latent_scale"))
    labels = np.repeat(np.asarray(classes), args.per_class)
    try:
        x = generate(params, cfg, labels, args.steps, sampler, args.cfg_scale, args.seed, device,
                     args.guidance, args.eta, progress=not args.no_progress, decode=decode,
                     workers=args.workers, prediction=prediction_of(meta))
    except KeyboardInterrupt as e:
        raise type(e)(f"{'terminated' if type(e).__name__ == 'Terminated' else 'interrupted'} while "
                      f"sampling; nothing was written") from None
    if not np.isfinite(to_numpy(x)).all():
        raise CommandFailed("the samples are not finite numbers (the model's weights or the guidance scale make "
                            "them overflow); nothing was written")
    images = to_uint8(x)
    title = (f"{meta.get('model_name', 'DiT')}, step {meta.get('step')}, {sampler} {args.steps} steps, "
             f"guidance {args.cfg_scale:g}, {'raw' if args.raw else 'EMA'} weights")
    try:
        save_grid(images, labels, meta.get("class_names"), args.out, ncol=args.per_class, title=title)
        print(f"wrote {args.out} ({len(labels)} samples)")
        if args.npz:
            save_adm_npz(args.npz, images, labels)
    except OSError as e:
        raise CommandFailed(f"could not write {e.filename or args.out}: {e.strerror or e}") from e


def main(argv=None):
    return run_command(build_parser(), run, argv, validate=_validate,
                       out_of_memory="lower --per-class, or sample fewer --classes at a time")


if __name__ == "__main__":
    sys.exit(main())
