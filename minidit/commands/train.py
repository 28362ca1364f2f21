"""Training DiT (paper section 4, docs/paper.md §4.3): uniform timesteps, the hybrid loss, AdamW and an
EMA of the weights, on the built-in data by default, with checkpoints that resume bit for bit.

    python -m minidit.train --model minidit-Tiny/4 --steps 2000 --out runs/tiny
"""
import math
import sys
import time

import numpy as np

from ..backend import Generator, device_of, get_array_module, set_device, synchronize, to_device, to_numpy
from ..cli import CommandFailed, run_command
from ..diffusion.objectives import describe
from ..flops import count_params
from ..latent.autoencoder import encoded_dataset, load_vae_encoder
from ..model import DiT_models, DiTConfig, apply_label_dropout, dit_backward, dit_forward, init_params
from ..training.checkpoint import load_checkpoint, resolve_input
from ..training.data import DataLoader, load_dataset
from ..training.optim import OPTIMIZERS, ema_update, init_ema, lr_at
from .objective_args import check_resumed_objective, config_overrides, grid_sampler, objective_for
from .train_args import build_parser, validate
from ..training.distributed import ProcessGradientSum, make_world, run_ranks
from ..training.local_world import LocalWorld, WorkerLost, run_processes
from ..training.parallel import DataParallel, GradientSum, available_cpus, resolve_workers, shards
from ..training.rundir import (RunDir, check_resumable, compare_resumed_args,
                               restore_training_state, training_state)
from .sample import generate
from ..training.viz import save_grid, to_uint8


def train_step(params, ema, opt, cfg, diffusion, x, y, rng, ema_decay, parallel=None, world=None):
    """One step of DiT's train.py: t ~ U{0..T-1}, noise, label dropout, forward, hybrid loss,
    backward, AdamW, EMA. Returns the batch means of loss, mse, vb and the gradient norm.
    The random draws happen in a fixed order (t, noise, dropout), so a seed fixes the run.
    diffusion: DiT's GaussianDiffusion or another objective (minidit.diffusion.objectives): it
    draws t, names the model's timesteps, noises x and gives the loss and its gradient.

    parallel: a minidit.training.parallel.DataParallel (entered) to split the batch over worker
    threads, as DDP splits it over GPUs; each shard's loss is weighted 1/N, so the summed
    gradients are those of the whole batch's mean loss. None runs the batch in one piece.
    world: a minidit.training.distributed world of K ranks (None or SingleProcess: this process
    alone). Every rank draws the whole batch's randomness and computes its own shards of it."""
    N = x.shape[0]
    t = diffusion.sample_timesteps(rng, N, device_of(x))  # U{0..T-1} for DiT
    noise = rng.normal(x.shape, dtype=x.dtype, device=device_of(x))
    y = apply_label_dropout(y, cfg, rng)
    dloss = get_array_module(x).full((N,), 1.0 / N, dtype=x.dtype)  # d(batch mean) / d(loss_n)
    parallel = parallel or _ONE_PIECE
    local = parallel.shards(N)
    if world is not None and world.size > 1:  # this rank's W shards of the K x W the batch is cut into
        W = len(local)
        local = shards(N, world.size * W)[world.rank * W:(world.rank + 1) * W]
        total = ProcessGradientSum(world, W)  # gathered from every rank while the backward runs
    else:
        total = GradientSum()  # the all-reduce, done while the backward runs

    def forward_backward(piece):
        shard, s = piece  # the shard's number (its place in the sum) and its slice of the batch
        try:
            x_t = diffusion.q_sample(x[s], t[s], noise[s])
            out, cache = dit_forward(params, x_t, diffusion.model_timesteps(t[s]), y[s], cfg)
            terms = diffusion.training_losses(out, x[s], x_t, t[s], noise[s], dloss=dloss[s])
            dit_backward(terms.pop("grad"), cache, need_dx=False, release=True,
                         sink=lambda group: total.add(shard, group))
            return terms
        except BaseException:
            total.fail()  # so that no other worker waits for this one's gradients forever
            raise

    pieces = parallel.each(forward_backward, list(enumerate(local)))
    grads = total.total
    # the gradient norm and the logged losses, moved to the host in one copy: one sync per step
    # on a GPU. Summed on the host in the same order as one array at a time would (same bits).
    xp = get_array_module(x)
    keys = [k for k in ("loss", "mse", "vb") if k in pieces[0]]
    losses = xp.stack([p[k].sum() for k in keys for p in pieces])  # (keys x this rank's shards)
    if world is not None and world.size > 1:  # every rank's, in global shard order
        losses = world.allgather(losses).reshape(world.size, len(keys), -1).transpose(1, 0, 2).reshape(-1)
    sums = to_numpy(xp.concatenate([xp.stack([(g * g).sum() for g in grads.values()]), losses]))
    gnorm = math.sqrt(sum(float(v) for v in sums[:len(grads)]))
    per_key = sums[len(grads):].reshape(len(keys), -1)
    stats = {k: float(sum(float(v) for v in per_key[i]) / N) for i, k in enumerate(keys)}
    if not all(math.isfinite(v) for v in stats.values()) or not math.isfinite(gnorm):
        return dict(stats, grad_norm=gnorm, finite=False)
    opt.step(params, grads, parallel)
    ema_update(ema, params, ema_decay, parallel)
    return dict(stats, grad_norm=gnorm, finite=True)


_ONE_PIECE = DataParallel(1)


def config_for(args, data, encoder=None):
    """The DiTConfig the arguments ask for, fitted to the data (or to the VAE's latents)."""
    overrides = dict(input_size=args.image_size, in_channels=data.channels, num_classes=data.num_classes)
    if encoder is not None:
        overrides.update(input_size=encoder.latent_size(args.image_size), in_channels=encoder.latent_channels)
    for name in ("block", "depth", "hidden_size", "num_heads", "patch_size"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.class_dropout is not None:
        overrides["class_dropout_prob"] = args.class_dropout
    overrides.update(config_overrides(args))  # flow: learn_sigma False
    return DiT_models[args.model](**overrides)


def _encoded_key(args):
    """What the table of latents depends on (latent.autoencoder.encoded_dataset keeps the last one)."""
    return (args.vae, str(args.data), args.image_size, args.num_images)


def encode_before_fork(args, threads, log=print):
    """For --worker-kind processes on a VAE's latents: encode the data once here, on `threads`
    threads, before the worker processes are forked; every process then finds the table in
    encoded_dataset's memory (the workers inherit it) instead of each encoding all of it alone."""
    if not args.vae:
        return
    t0 = time.perf_counter()
    data = load_dataset(args.data, split="train", image_size=args.image_size, n=args.num_images, seed=0)
    encoder = load_vae_encoder(args.vae, device="cpu")
    with DataParallel(threads) as parallel:
        encoded_dataset(encoder, data.images, _encoded_key(args), parallel, not args.no_progress)
    log(f"encoded {len(data)} images and their mirror images in {time.perf_counter() - t0:.1f} s, before "
        f"the worker processes start")


def run(args, log=print):
    """Train as the parsed arguments say; returns a summary dict.

    Everything the arguments name (data, VAE, the checkpoint to resume) is read and checked
    before the run directory is touched. Raises TrainingDiverged when the loss or the weights
    stop being finite, and re-raises an interrupt (Ctrl-C, SIGTERM) saying where it stopped."""
    device = set_device(args.device)  # --device auto / MINIDIT_DEVICE resolved first
    world = make_world(device)
    if args.vae:  # by its absolute path from here on (a bare name may be the shipped VAE)
        args.vae = str(resolve_input(args.vae, "--vae"))
    if world.size > 1:
        if args.worker_kind == "processes":
            if world.rank > 0:
                raise SystemExit(2)  # rank 0 says why
            raise ValueError("--worker-kind processes starts its own processes: under mpirun, each rank's "
                             "workers are threads (--worker-kind threads)")
        return run_ranks(args, world, train, log)
    if args.worker_kind == "processes":  # --workers N processes on this machine (training/local_world.py)
        return run_processes(args, resolve_workers(args.workers, args.batch_size, device), train, log,
                             prepare=lambda count: encode_before_fork(args, count, log))
    run_dir = RunDir(args.out, args.resume, args.overwrite, args.keep, log=log)
    try:
        return train(args, run_dir, log)
    finally:
        run_dir.close()


def train(args, run_dir, log=print, world=None):
    """The training itself, in a checked run directory (see run); world: the MPI ranks (run_ranks)
    or this machine's worker processes (run_processes)."""
    device = set_device(args.device)
    world = world or make_world(device)
    data = load_dataset(args.data, split="train", image_size=args.image_size, n=args.num_images, seed=0)
    encoder = load_vae_encoder(args.vae, device=device) if args.vae else None
    cfg = config_for(args, data, encoder)
    diffusion = objective_for(args, cfg)
    rng = Generator(args.seed, device=device)
    params = init_params(cfg, seed=args.seed, device=device)
    ema = init_ema(params)
    opt_kwargs = {"rms": args.muon_rms} if args.optimizer == "muon" and args.muon_rms is not None else {}
    opt = OPTIMIZERS[args.optimizer](params, lr=args.lr, weight_decay=args.weight_decay, **opt_kwargs)
    loader = DataLoader(data, args.batch_size, rng, flip=not args.no_flip, device=device)
    step = 0
    workers = resolve_workers(args.workers, args.batch_size, device)  # threads in this process
    local = isinstance(world, LocalWorld)  # --worker-kind processes: one thread in each
    if local:
        workers = 1
    elif world.size > 1:
        if args.batch_size < world.size:
            raise ValueError(f"--batch-size {args.batch_size} cannot be shared by {world.size} MPI ranks: "
                             f"each rank needs at least one image of every batch")
        if args.workers == 0:  # the machine's CPUs shared by the ranks placed on it
            workers = resolve_workers(max(1, available_cpus() // world.local_size), args.batch_size, device)
        workers = min(workers, args.batch_size // world.size)  # every thread of every rank gets an image
    # what a checkpoint records: the workers (threads, or processes on this machine) and the MPI ranks
    count, mpi_ranks = (world.size, 1) if local else (workers, world.size)
    if args.resume:
        meta, groups = load_checkpoint(run_dir.resume_from)
        if meta.get("kind", "dit") != "dit":
            raise ValueError(f"--resume: {run_dir.resume_from} is a {meta.get('kind')} checkpoint, not a DiT's")
        check_resumable(meta, groups, run_dir.resume_from)
        saved_args = meta.get("args")
        if isinstance(saved_args, dict):  # threads and processes give the same bits: not a change
            saved_args = {k: v for k, v in saved_args.items() if k != "worker_kind"}
            saved_args.setdefault("optimizer", "adamw")  # a run from before --optimizer trained with AdamW
        compare_resumed_args(saved_args, args, log)
        saved = meta.get("workers", count)
        if args.workers == 0 and not local:
            workers = count = saved  # the count decides how float32 gradients are summed: keep it
        elif saved != count:
            log(f"note: the run used {saved} workers and now {count}; it will not match an "
                f"uninterrupted run to the bit (sums round differently)")
        ranks = meta.get("ranks", 1)
        if ranks != mpi_ranks:
            log(f"note: the run used {ranks} rank{'s' if ranks > 1 else ''} (mpirun -n {ranks}) and now "
                f"{mpi_ranks}; it continues, but the gradients are cut into other shards and summed in "
                f"another order, so it will not match an uninterrupted run to the bit")
        check_resumed_objective(meta, diffusion)
        if DiTConfig.from_dict(meta["config"]) != cfg:
            raise ValueError(f"--resume: the checkpoint's config {meta['config']} differs from the "
                             f"arguments' {cfg.to_dict()}")
        for k in params:
            params[k][...] = to_device(groups["model"][k], device)
            ema[k][...] = to_device(groups["ema"][k], device)
        restore_training_state(meta, groups, opt, rng, loader)
        step = meta["step"]
        log(f"resumed {run_dir.path} at step {step}")
    run_dir.start(step)

    def save(step):
        if world.rank > 0:  # rank 0 writes for every rank: they all hold the same numbers
            return None
        state, groups = training_state(opt, rng, loader)
        meta = dict(kind="dit", config=cfg.to_dict(), model_name=args.model, class_names=data.class_names,
                    dataset=str(args.data), image_size=args.image_size, args=vars(args), workers=count,
                    ranks=mpi_ranks, objective=describe(diffusion),
                    vae=args.vae, latent_scale=getattr(encoder, "scale", None), **state)
        return run_dir.save(step, meta, model=params, ema=ema, **groups)

    def sample_grid(step):
        labels = np.repeat(np.arange(cfg.num_classes), 4 if cfg.num_classes <= 16 else 1)[:64]
        decode = encoder.decode if encoder is not None else None
        sampler = grid_sampler(args)  # "ddpm", or "euler" for a flow model
        x = generate(ema, cfg, labels, args.sample_steps, sampler, args.cfg_scale, seed=0, device=device,
                     decode=decode, prediction=args.prediction)
        path = run_dir.path / "samples" / f"step_{step:07d}.png"
        save_grid(to_uint8(x), labels, data.class_names, path,
                  title=f"{args.model} EMA step {step}, {sampler} {args.sample_steps} steps, guidance {args.cfg_scale:g}")
        return path

    n_params = count_params(cfg)["trainable"]
    log(f"{args.model} ({cfg.block}, {n_params:,} trainable params, input {cfg.input_size}x{cfg.input_size}"
        f"x{cfg.in_channels}, {cfg.num_classes} classes) on {device}"
        f"{f' with {workers} data-parallel workers' if workers > 1 else ''}"
        f"{f' with {world.size} data-parallel worker processes' if local else ''}"
        f"{f' on each of {world.size} {world.name} ranks' if world.size > 1 and not local else ''}, {len(data)} training images")
    from tqdm.auto import tqdm
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress or world.rank > 0, desc="train",
               dynamic_ncols=True)
    acc, t_last, start_step = [], time.perf_counter(), step
    try:
        with DataParallel(workers) as parallel:
            latents = None
            if encoder is not None:  # the frozen encoder's posteriors, once, for every image and its mirror
                t_enc = time.perf_counter()
                latents, again = encoded_dataset(encoder, data.images, _encoded_key(args), parallel,
                                                 not args.no_progress)
                if not (again and local):  # worker processes: said by encode_before_fork
                    log(f"encoded {len(data)} images and their mirror images in {time.perf_counter() - t_enc:.1f} s"
                        + (" (kept from the previous run in this process)" if again else ""))
            while step < args.steps:
                x, y = next(loader)
                if latents is not None:
                    x = latents.sample(loader.last_index, loader.last_flip, rng)
                opt.lr = lr_at(step + 1, args.lr, args.steps, args.warmup, args.lr_schedule, args.lr_final)
                stats = train_step(params, ema, opt, cfg, diffusion, x, y, rng, args.ema_decay, parallel, world)
                step += 1
                if not stats["finite"]:
                    raise run_dir.diverged(step, stats)
                acc.append(stats)
                bar.update(1)
                if step % args.log_every == 0 or step == args.steps:
                    synchronize()
                    now = time.perf_counter()
                    rec = {"step": step, **{k: float(np.mean([s[k] for s in acc])) for k in acc[0] if k != "finite"},
                           "lr": opt.lr,
                           "steps_per_sec": len(acc) / (now - t_last),
                           "images_per_sec": len(acc) * args.batch_size / (now - t_last)}
                    run_dir.log(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", it_s=f"{rec['steps_per_sec']:.2f}")
                    acc, t_last = [], now
                if step % args.ckpt_every == 0 or step == args.steps:
                    save(step)
                    run_dir.plot_loss(title=f"{args.model} on {args.data}", final=step == args.steps)
                if world.rank == 0 and not args.no_sample_grid and (
                        (args.sample_every and step % args.sample_every == 0) or step == args.steps):
                    try:
                        sample_grid(step)
                    except OSError as e:
                        raise run_dir.write_failed(e, f"the sample grid of step {step}") from e
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: say where the run stopped
        raise run_dir.interrupted(e, step) from None
    except WorkerLost as e:  # a worker process died or failed (rank 0 only: the workers just stop)
        if world.rank > 0:
            raise
        newest = run_dir.last_checkpoint or "none (nothing is kept)"
        raise CommandFailed(f"{e}, at step {step + 1}; the newest checkpoint is {newest}"
                            + (" (continue with --resume)" if run_dir.last_checkpoint else "")) from None
    finally:
        bar.close()
    last = run_dir.last_checkpoint
    summary = {"out": str(run_dir.path), "step": step, "steps_this_run": step - start_step,
               "checkpoint": str(last) if last else None}
    log(f"done: step {step}, checkpoint {summary['checkpoint']}, samples in {run_dir.path / 'samples'}")
    return summary


def main(argv=None):
    return run_command(build_parser(), run, argv, validate=validate,
                       out_of_memory="lower --batch-size (or the model's size)")


if __name__ == "__main__":
    sys.exit(main())
