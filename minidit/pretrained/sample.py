"""Sampling the paper's released DiT with minidit's own layers, no PyTorch (docs/paper.md §4.4, §6):

    python -m minidit.pretrained --dit DiT-XL-2-256x256.pt --vae sd-vae-ft-mse --classes 207,360,387

The defaults are the official sample.py's: 250 respaced DDPM steps, guidance 4 on latent channels
0-2 only (`--guidance official`), seed 0, its eight labels. DDIM (`--sampler ddim --steps 50`)
is five times faster for similar pictures. Writes a labelled PNG grid and, with --npz, the ADM
evaluation .npz.
"""
import sys
import time
from pathlib import Path

import numpy as np

from ..backend import set_device, synchronize
from ..cli import CommandFailed, CommandParser, check_output_file, check_positive, check_range, run_command
from .vae import load_sd_vae
from ..commands.sample import IMAGE_SUFFIXES, generate, save_adm_npz
from ..training.viz import save_titled_grid, to_uint8
from .dit import load_released_dit

OFFICIAL_LABELS = "207,360,387,974,88,979,417,279"  # sample.py's defaults (golden retriever, otter, ...)


def imagenet_class_names():
    """The 1,000 ImageNet-1k class names, by class id (the table shipped in data/)."""
    from ..training.checkpoint import shipped_file
    lines = Path(shipped_file("imagenet_classes.txt")).read_text().splitlines()
    names = [ln.split(" ", 1)[1] for ln in lines if ln and not ln.startswith("#")]
    if len(names) != 1000:
        raise RuntimeError(f"the shipped ImageNet class table has {len(names)} names, not 1000")
    return names


def parse_labels(text, num_classes, names=None):
    """Comma-separated class ids (or exact class names from the table) -> list of ids."""
    ids, lowered = [], [n.lower() for n in names or ()]
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if item.lstrip("-").isdigit():
            c = int(item)
        elif names is not None and item.lower() in lowered:
            c = lowered.index(item.lower())
        else:
            raise ValueError(f"--classes: {item!r} is neither a class id nor an ImageNet class name")
        if not 0 <= c < num_classes:
            raise ValueError(f"--classes: class id {c} is outside [0, {num_classes}) for this model")
        ids.append(c)
    if not ids:
        raise ValueError("--classes is empty")
    return ids


def build_parser():
    ap = CommandParser(prog="python -m minidit.pretrained",
                       description="Sample the paper's released DiT (official .pt or diffusers folder) "
                                   "with the Stable Diffusion VAE, without PyTorch.")
    ap.add_argument("--dit", required=True, help="DiT-XL-2-256x256.pt, DiT-XL-2-512x512.pt or a diffusers "
                                                 "DiT folder (with transformer/)")
    ap.add_argument("--vae", default=None, help="an AutoencoderKL folder or file (sd-vae-ft-mse); default: "
                                                "the vae/ of a diffusers --dit folder")
    ap.add_argument("--classes", default=OFFICIAL_LABELS, help="comma-separated ImageNet ids or names "
                                                               "(default: the official sample.py's eight)")
    ap.add_argument("--image-size", type=int, default=None, choices=[256, 512],
                    help="checked against the weights (default: what they were trained for)")
    ap.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim"])
    ap.add_argument("--steps", type=int, default=250, help="sampling steps (official: 250 DDPM)")
    ap.add_argument("--cfg-scale", type=float, default=4.0, help="guidance scale >= 1 (official: 4)")
    ap.add_argument("--guidance", default="official", choices=["official", "all"],
                    help="guide latent channels 0-2 as the released code (default) or all four")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-heads", type=int, default=None, help="heads, for a DiT that is none of the paper's")
    ap.add_argument("--device", default=None, help="cpu (default), gpu or auto")
    ap.add_argument("--workers", type=int, default=0, help="CPU threads sharing the batch (0: one per CPU)")
    ap.add_argument("--out", default="released.png", help="PNG grid to write")
    ap.add_argument("--npz", default=None, help="also write an ADM-format .npz (arr_0 images, arr_1 labels)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _validate(ap, args):
    check_positive(ap, args, ("steps",))
    check_range(ap, args, "cfg_scale", 1)
    check_range(ap, args, "seed", 0)
    check_range(ap, args, "workers", 0)
    if args.num_heads is not None:
        check_positive(ap, args, ("num_heads",))
    check_output_file(ap, "--out", args.out, IMAGE_SUFFIXES)
    if args.npz is not None:
        check_output_file(ap, "--npz", args.npz, (".npz",))


def run(args):
    device = set_device(args.device)
    t0 = time.perf_counter()
    params, cfg, source = load_released_dit(args.dit, num_heads=args.num_heads)
    if args.vae is None and not (Path(args.dit).is_dir() and (Path(args.dit) / "vae").is_dir()):
        raise ValueError("--vae is needed (an AutoencoderKL such as stabilityai/sd-vae-ft-mse) unless --dit "
                         "is a diffusers folder with a vae/")
    vae = load_sd_vae(args.vae or Path(args.dit) / "vae", device=device)
    size = cfg.input_size * vae.cfg.downsample
    if args.image_size is not None and args.image_size != size:
        raise ValueError(f"--image-size {args.image_size}: these weights make {size} px images "
                         f"(latent {cfg.input_size}x{cfg.input_size})")
    if cfg.in_channels != vae.cfg.latent_channels:
        raise ValueError(f"the DiT works on {cfg.in_channels} latent channels, the VAE makes {vae.cfg.latent_channels}")
    names = imagenet_class_names() if cfg.num_classes == 1000 else None
    labels = np.asarray(parse_labels(args.classes, cfg.num_classes, names))
    if device == "gpu":
        from ..backend import to_device
        params = {k: to_device(v, device) for k, v in params.items()}
    print(f"DiT ({cfg.depth} blocks, width {cfg.hidden_size}, patch {cfg.patch_size}) from {source}; "
          f"VAE {vae.cfg.block_out_channels}; loaded in {time.perf_counter() - t0:.1f} s")
    t1 = time.perf_counter()
    try:
        x = generate(params, cfg, labels, args.steps, args.sampler, args.cfg_scale, args.seed, device,
                     args.guidance, progress=not args.no_progress, decode=vae.decode_latents,
                     workers=args.workers)
    except KeyboardInterrupt as e:
        raise type(e)(f"{'terminated' if type(e).__name__ == 'Terminated' else 'interrupted'} while "
                      f"sampling; nothing was written") from None
    synchronize()
    seconds = time.perf_counter() - t1
    images = to_uint8(x)
    title = (f"DiT {size}px ({source.split(' ')[0]} weights), {args.sampler} {args.steps} steps, guidance "
             f"{args.cfg_scale:g} ({args.guidance}), seed {args.seed}")
    try:
        save_titled_grid(images, [f"{c}: {names[c] if names else c}" for c in labels], args.out,
                         ncol=4, title=title, cell=min(2.56, size / 100))
        print(f"wrote {args.out} ({len(labels)} images in {seconds:.1f} s, {seconds / len(labels):.1f} s each)")
        if args.npz:
            save_adm_npz(args.npz, images, labels)
    except OSError as e:
        raise CommandFailed(f"could not write {e.filename or args.out}: {e.strerror or e}") from e


def main(argv=None):
    return run_command(build_parser(), run, argv, validate=_validate,
                       out_of_memory="sample fewer --classes at a time")


if __name__ == "__main__":
    sys.exit(main())
