"""Parameter counts and Gflops in the paper's convention (paper section 3.2 "Model size",
Table 4; docs/paper.md §2): one multiply-accumulate counts as one flop, for the forward pass of one
image, without guidance doubling and without the VAE.

Run `python -m minidit.flops` to print the paper's table side by side with ours.
"""
from .cli import CommandParser, run_command
from .model import FREQ_DIM, DiT_models, param_shapes

# The paper's Table 4 (params in millions, Gflops), docs/paper.md §2.3.
PAPER_TABLE = {
    "DiT-S/8": (33, 0.36), "DiT-S/4": (33, 1.41), "DiT-S/2": (33, 6.06),
    "DiT-B/8": (131, 1.42), "DiT-B/4": (130, 5.56), "DiT-B/2": (130, 23.01),
    "DiT-L/8": (459, 5.01), "DiT-L/4": (458, 19.70), "DiT-L/2": (458, 80.71),
    "DiT-XL/8": (676, 7.39), "DiT-XL/4": (675, 29.05), "DiT-XL/2": (675, 118.64),
}
PAPER_BLOCK_DESIGNS = {  # DiT-XL/2 ablations of Table 4: (params M, Gflops, FID-50K at 400K)
    "in-context": (449, 119.37, 35.24), "cross-attention": (598, 137.62, 26.14),
    "adaLN": (600, 118.56, 25.21), "adaLN-Zero": (675, 118.64, 19.47),
}


def count_params(cfg):
    """{'all': ..., 'trainable': ...}: 'all' includes the fixed (T, D) position table, as the
    official `sum(p.numel() for p in model.parameters())` does; 'trainable' excludes it."""
    trainable = 0
    for shape in param_shapes(cfg).values():
        n = 1
        for s in shape:
            n *= s
        trainable += n
    return {"all": trainable + cfg.num_tokens * cfg.hidden_size, "trainable": trainable}


def forward_macs(cfg):
    """Multiply-accumulates of one forward pass of one image (every linear, the patch embedding
    and the two attention products; element-wise work is not counted)."""
    D, T, p = cfg.hidden_size, cfg.num_tokens, cfg.patch_size
    macs = T * cfg.in_channels * p * p * D  # patch embedding
    macs += FREQ_DIM * D + D * D  # timestep MLP (the label table is a lookup: 0 MACs)
    macs += cfg.depth * cfg.design.macs(T, D, cfg.mlp_hidden)  # the blocks (minidit.blocks)
    if cfg.design.adaptive_final:
        macs += 2 * D * D  # the final layer's adaLN regression
    macs += T * D * p * p * cfg.out_channels  # final linear decoder
    return macs


def gflops(cfg):
    """Paper-convention Gflops (= G multiply-accumulates) of one forward pass of one image."""
    return forward_macs(cfg) / 1e9


def training_compute(cfg, batch_size, steps):
    """Training compute in Gflops as the paper estimates it: Gflops x batch x steps x 3
    (a backward pass costs about twice the forward)."""
    return gflops(cfg) * batch_size * steps * 3


def sampling_compute(cfg, steps, guidance=False):
    """Sampling compute per image in Gflops: Gflops x steps, doubled with guidance."""
    return gflops(cfg) * steps * (2 if guidance else 1)


def paper_table():
    """Rows (name, ours params M, paper params M, ours Gflops, paper Gflops) for the 12 models
    and the 4 block designs of DiT-XL/2."""
    rows = []
    for name, (pp, pg) in PAPER_TABLE.items():
        cfg = DiT_models[name]()
        rows.append((name, count_params(cfg)["trainable"] / 1e6, pp, gflops(cfg), pg))
    for design, (pp, pg, _) in PAPER_BLOCK_DESIGNS.items():
        cfg = DiT_models["DiT-XL/2"](block=design)
        rows.append((f"DiT-XL/2 {design}", count_params(cfg)["trainable"] / 1e6, pp, gflops(cfg), pg))
    return rows


def _print(args):
    if args.model:
        if args.model not in DiT_models:
            raise ValueError(f"unknown --model {args.model!r}; known: {', '.join(DiT_models)}")
        kw = {k: v for k, v in (("block", args.block), ("input_size", args.input_size)) if v is not None}
        cfg = DiT_models[args.model](**kw)
        n = count_params(cfg)
        print(f"{args.model} ({cfg.block}, input {cfg.input_size}, T={cfg.num_tokens}): "
              f"params {n['all']:,} (trainable {n['trainable']:,}), {gflops(cfg):.4f} Gflops")
        return
    print("DiT models at 256 px (latent 32x32x4, 1000 classes); Gflops = G multiply-accumulates "
          "per forward of one image")
    print(f"{'model':<28}{'params (M)':>12}{'paper':>8}{'Gflops':>10}{'paper':>9}{'diff':>8}")
    for name, ours_p, paper_p, ours_g, paper_g in paper_table():
        print(f"{name:<28}{ours_p:>12.2f}{paper_p:>8}{ours_g:>10.3f}{paper_g:>9.2f}{ours_g - paper_g:>+8.3f}")
    print("params: trainable, i.e. without the fixed position table (the paper's convention)")


def _validate(ap, args):
    if not args.model and (args.block or args.input_size):
        ap.error("--block and --input-size describe the model given with --model")


def main(argv=None):
    ap = CommandParser(prog="python -m minidit.flops",
                       description="Parameters and Gflops of DiT models, against the paper.")
    ap.add_argument("--model", help="print one model (any name of minidit.model.DiT_models) instead")
    ap.add_argument("--block", default=None, help="block design for --model")
    ap.add_argument("--input-size", type=int, default=None, help="latent/pixel side for --model")
    return run_command(ap, _print, argv, validate=_validate, plots=False)


if __name__ == "__main__":
    raise SystemExit(main())
