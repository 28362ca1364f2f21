"""Training the first stage of latent diffusion (paper section 3.1, docs/paper.md §4.2): a miniature
Stable-Diffusion VAE on the built-in data, with AdamW (cosine-decayed lr by default), checkpoints
that resume bit for bit, and, at the end, the latent scale factor measured on the data, the
held-out reconstruction PSNR, a picture of reconstructions and the VAE file DiT reads (vae.npz).

    python -m minidit.train_vae --downsample 4 --out runs/vae_shapes32
"""
import json
import math
import sys
import time

import numpy as np

from ..backend import Generator, device_of, set_device, synchronize, to_device, to_numpy
from ..training.checkpoint import load_checkpoint, save_checkpoint
from ..cli import CommandParser, atomic_write, check_output_folder, check_positive, check_range, run_command
from ..training.data import DataLoader, load_dataset, to_model_space
from ..training.optim import AdamW
from ..training.rundir import (RunDir, add_run_arguments, check_resumable, compare_resumed_args,
                               restore_training_state, training_state)
from ..training.viz import save_grid, to_uint8
from .autoencoder import (CH_MULT, VAEConfig, VAEEncoder, init_params, psnr, vae_backward, vae_config,
                          vae_forward)



def train_step(params, opt, cfg, x, rng, kl_weight):
    """One AdamW step on the VAE loss with a fresh posterior noise eps. Returns the batch stats."""
    f = cfg.downsample
    eps = rng.normal((x.shape[0], cfg.z_channels, x.shape[2] // f, x.shape[3] // f), dtype=x.dtype,
                     device=device_of(x))
    loss, cache = vae_forward(params, cfg, x, eps, kl_weight)
    grads = vae_backward(1.0, cache)
    gnorm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    s = cache[-1]
    stats = {"loss": float(loss), "rec": float(s["rec"]), "kl": float(s["kl"]), "grad_norm": gnorm}
    stats["finite"] = all(math.isfinite(v) for v in stats.values())
    if stats["finite"]:
        opt.step(params, grads)
    return stats


def lr_at(step, args):
    """The learning rate of step `step` (0-based) of a run of args.steps steps."""
    if args.lr_decay == "none":
        return args.lr
    floor = 0.05 * args.lr  # a short run gains from a final low-lr phase; DiT itself keeps lr fixed
    return floor + (args.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * step / args.steps))


def latent_scale(encoder, images, rng, chunk=64):
    """1 / std of posterior samples of `images` (N, C, H, W) in [-1, 1], as SD's 0.18215 was found."""
    z = np.concatenate([to_numpy(encoder.sample_latents(images[i:i + chunk], rng))
                        for i in range(0, len(images), chunk)])
    return float(1.0 / z.astype(np.float64).std())


def reconstruct(encoder, images, chunk=64):
    """Decode the posterior means of `images` (N, C, H, W): the deterministic reconstruction."""
    return np.concatenate([to_numpy(encoder.decode(encoder.encode_mean(images[i:i + chunk])))
                           for i in range(0, len(images), chunk)])


def first_images(ds, n, device):
    """The first n images of a dataset as (n, C, H, W) float32 in [-1, 1] on `device`, unflipped."""
    return to_device(to_model_space(ds.images[:n]), device)


def build_parser():
    ap = CommandParser(prog="python -m minidit.train_vae", description="Train a miniature SD-style VAE.")
    ap.add_argument("--data", default="shapes", help="'shapes' (built in, default), 'mnist' or an image folder")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--num-images", type=int, default=None, help="training images (shapes default 10,000)")
    ap.add_argument("--downsample", type=int, default=4, help=f"spatial factor f, one of {sorted(CH_MULT)}")
    ap.add_argument("--ch-mult", default=None,
                    help="channel multipliers per level, e.g. 1,2,4 (overrides --downsample)")
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--num-res-blocks", type=int, default=1)
    ap.add_argument("--z-channels", type=int, default=4)
    ap.add_argument("--num-groups", type=int, default=8, help="GroupNorm groups")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-decay", default="cosine", choices=["cosine", "none"],
                    help="cosine: from --lr down to lr/20 at --steps (default); none: constant")
    ap.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the mean KL per latent element")
    ap.add_argument("--no-flip", action="store_true", help="turn off random horizontal flips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu (default), gpu or auto")
    add_run_arguments(ap, out="runs/vae")
    ap.add_argument("--scale-images", type=int, default=2048, help="training images the latent scale is measured on")
    ap.add_argument("--eval-images", type=int, default=1000, help="held-out images for the PSNR")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _validate(ap, a):
    check_positive(ap, a, ("steps", "batch_size", "log_every", "ckpt_every", "keep", "image_size",
                           "base_channels", "num_res_blocks", "z_channels", "num_groups", "scale_images",
                           "eval_images", "lr"))
    check_range(ap, a, "kl_weight", 0)
    check_range(ap, a, "seed", 0)
    if a.num_images is not None:
        check_positive(ap, a, ("num_images",))
    if a.ch_mult is None and a.downsample not in CH_MULT:
        ap.error(f"--downsample must be one of {sorted(CH_MULT)} (or give --ch-mult), got {a.downsample}")
    if a.resume and a.overwrite:
        ap.error("--resume and --overwrite contradict each other")
    check_output_folder(ap, "--out", a.out)


def make_config(args, channels):
    kw = dict(in_channels=channels, z_channels=args.z_channels, base_channels=args.base_channels,
              num_res_blocks=args.num_res_blocks, num_groups=args.num_groups)
    if args.ch_mult is None:
        cfg = vae_config(args.downsample, **kw)
    else:
        try:
            mult = tuple(int(m) for m in args.ch_mult.split(","))
        except ValueError:
            raise ValueError(f"--ch-mult must be comma-separated integers, got {args.ch_mult!r}") from None
        cfg = VAEConfig(ch_mult=mult, **kw)
    if args.image_size % cfg.downsample:
        raise ValueError(f"--image-size {args.image_size} is not divisible by the downsampling factor {cfg.downsample}")
    return cfg


def run(args, log=print):
    """Train as the parsed arguments say; returns a summary dict. Everything is checked before the
    run directory is touched; raises TrainingDiverged, and re-raises an interrupt saying where
    the run stopped (minidit.training.rundir)."""
    run_dir = RunDir(args.out, args.resume, args.overwrite, args.keep,
                     outputs=("vae.npz", "reconstructions.png", "summary.json"), log=log)
    try:
        return _train(args, run_dir, log)
    finally:
        run_dir.close()


def _train(args, run_dir, log):
    device = set_device(args.device)
    out = run_dir.path
    data = load_dataset(args.data, split="train", image_size=args.image_size, n=args.num_images, seed=0)
    cfg = make_config(args, data.channels)

    rng = Generator(args.seed, device=device)
    params = init_params(cfg, seed=args.seed, device=device)
    opt = AdamW(params, lr=args.lr)
    loader = DataLoader(data, args.batch_size, rng, flip=not args.no_flip, device=device)
    step = 0
    if args.resume:
        meta, groups = load_checkpoint(run_dir.resume_from)
        check_resumable(meta, groups, run_dir.resume_from)
        if meta.get("kind") != "vae" or VAEConfig.from_dict(meta["config"]) != cfg:
            raise ValueError(f"--resume: the checkpoint's config {meta.get('config')} differs from the "
                             f"arguments' {cfg.to_dict()}")
        compare_resumed_args(meta.get("args"), args, log)
        for k in params:
            params[k][...] = to_device(groups["model"][k], device)
        restore_training_state(meta, groups, opt, rng, loader)
        step = meta["step"]
        log(f"resumed {out} at step {step}")

    run_dir.start(step)

    def save(step, **final):  # final: latent_scale and held_out_psnr, known only at the end
        state, groups = training_state(opt, rng, loader)
        meta = dict(kind="vae", step=step, config=cfg.to_dict(), dataset=str(args.data),
                    image_size=args.image_size, kl_weight=args.kl_weight, args=vars(args),
                    **{"latent_scale": None, **final}, **state)
        return run_dir.save(step, meta, model=params, **groups), meta
    n_params = sum(int(v.size) for v in params.values())
    log(f"VAE f={cfg.downsample} ch_mult={cfg.ch_mult} base {cfg.base_channels} ({n_params:,} params): "
        f"{args.image_size}x{args.image_size}x{cfg.in_channels} -> {args.image_size // cfg.downsample}^2 x "
        f"{cfg.z_channels} latents, on {device}, {len(data)} training images")
    from tqdm.auto import tqdm
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, desc="train_vae", dynamic_ncols=True)
    acc, t_last, start_step = [], time.perf_counter(), step
    try:
        while step < args.steps:
            x, _ = next(loader)
            opt.lr = lr_at(step, args)
            stats = train_step(params, opt, cfg, x, rng, args.kl_weight)
            step += 1
            if not stats["finite"]:
                raise run_dir.diverged(step, stats)
            acc.append(stats)
            bar.update(1)
            if step % args.log_every == 0 or step == args.steps:
                synchronize()
                now = time.perf_counter()
                rec = {"step": step, **{k: float(np.mean([s[k] for s in acc])) for k in ("loss", "rec", "kl", "grad_norm")}}
                rec["train_psnr"] = 10 * math.log10(4.0 / rec["rec"])
                rec["lr"] = opt.lr
                rec["steps_per_sec"] = len(acc) / (now - t_last)
                run_dir.log(rec)
                bar.set_postfix(rec=f"{rec['rec']:.4f}", psnr=f"{rec['train_psnr']:.1f}")
                acc, t_last = [], now
            if step % args.ckpt_every == 0 and step < args.steps:
                save(step)
                run_dir.plot_loss(f"VAE f={cfg.downsample} on {args.data}", keys=("loss", "rec"))
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: say where the run stopped
        raise run_dir.interrupted(e, step) from None
    finally:
        bar.close()

    # The end of training: measure the latent scale on the data, then the held-out PSNR.
    try:
        enc = VAEEncoder(params, cfg, 1.0)
        n_scale = min(args.scale_images, len(data))
        scale = latent_scale(enc, first_images(data, n_scale, device), Generator(args.seed + 1, device=device))
        enc.scale = scale
        has_test = args.data in ("shapes", "mnist")  # an image folder has no test split: report on training images
        test = load_dataset(args.data, split="test", image_size=args.image_size, seed=0) if has_test else data
        x_test = first_images(test, min(args.eval_images, len(test)), device)
        x_rec = reconstruct(enc, x_test)
        held_out_psnr = psnr(x_rec, to_numpy(x_test))
        last_ckpt, meta = save(step, latent_scale=scale, held_out_psnr=held_out_psnr)
        run_dir.plot_loss(f"VAE f={cfg.downsample} on {args.data}", keys=("loss", "rec"), final=True)
        # The VAE alone (no optimiser state): what latent DiT training and sampling read.
        vae_file = save_checkpoint(out / "vae.npz", {k: meta[k] for k in ("kind", "step", "config", "dataset",
                                   "image_size", "kl_weight", "latent_scale", "held_out_psnr")}, model=params)
        k = min(16, len(x_test))
        pics = to_uint8(np.concatenate([to_numpy(x_test[:k]), x_rec[:k]]))
        save_grid(pics, np.repeat([0, 1], k), ["original", "reconstruction"], out / "reconstructions.png", ncol=k,
                  title=f"VAE f={cfg.downsample}, step {step}: held-out PSNR {held_out_psnr:.2f} dB")
        summary = {"out": str(out), "step": step, "steps_this_run": step - start_step, "checkpoint": str(last_ckpt),
                   "vae": str(vae_file), "latent_scale": scale, "held_out_psnr": held_out_psnr,
                   "eval_images": len(x_test)}
        with atomic_write(out / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n")
    except KeyboardInterrupt as e:
        raise run_dir.interrupted(e, step) from None
    except OSError as e:
        raise run_dir.write_failed(e, e.filename or f"the VAE's files in {out}") from e
    log(f"done: step {step}, latent scale {scale:.5f}, held-out PSNR {held_out_psnr:.2f} dB on "
        f"{len(x_test)} images ({'test split' if test is not data else 'training images'}); VAE in {vae_file}")
    return summary


def main(argv=None):
    return run_command(build_parser(), run, argv, validate=_validate, out_of_memory="lower --batch-size")


if __name__ == "__main__":
    sys.exit(main())
