"""The autograder's cases: for every exercise, the calls it is graded on (small float64 inputs
from a fixed seed). Only inputs are built here, never an answer: the expected outputs come from
running the reference bodies once (minidit.course.recording.record) and are stored as numbers
in the student edition.

A case is a function that returns a list of Call. Inputs built with other exercises (a backward's
cache comes from its forward) are stored too, so a student edition needs none of them written.
Objects that are not arrays (a GaussianDiffusion, a block design, a toy model function) are
"live": `setup` builds them afresh in the grading process, from code that is no exercise.

At about 380 lines it stays one module on purpose: it is a table of one short case per exercise,
read one entry at a time, and keeping the table whole keeps every case's registration in one place.
"""
from dataclasses import dataclass, field

import numpy as np

CASES = {}  # exercise name -> function(rng, live) -> [Call, ...]


@dataclass
class Call:
    """One graded call: fn(*args, **kwargs); `names` label the outputs in messages; `inplace`
    lists the argument positions the function updates in place (their values afterwards are
    graded); `raises`: (exception type name, text its message contains) when the call must fail."""
    args: tuple
    kwargs: dict = field(default_factory=dict)
    names: tuple = ()
    inplace: tuple = ()
    raises: tuple = ()
    returns_groups: bool = False  # blocks_backward: the grads handed over are graded too


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


class Collector:
    """A hand_over function that keeps what it is given (blocks_backward's case)."""

    def __init__(self):
        self.groups = []

    def __call__(self, group):
        self.groups.append(group)


def toy_model(x, t):
    """A fixed stand-in for the network in the sampler cases: (N, C, H, W), t (N,) -> (N, 2C, H, W)."""
    t = np.asarray(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
    return np.concatenate([np.tanh(0.7 * x + t / 1000.0), np.tanh(0.3 * x - 0.2)], axis=1)


def setup():
    """The live objects of the cases, built without any exercise."""
    from ..blocks import get_design
    from ..diffusion import create_diffusion
    return {"diffusion": create_diffusion("", learn_sigma=True),
            "fixed": create_diffusion("", learn_sigma=False),
            "ddim": create_diffusion("ddim10", learn_sigma=True),
            "design": get_design("adaLN-Zero"),
            "model_fn": toy_model}


def _r(rng, *shape):
    return rng.standard_normal(shape)


# Layers ---------------------------------------------------------------------------------------

@case("gelu_backward")
def _(rng, live):
    from ..layers.activations import gelu_forward
    _, cache = gelu_forward(_r(rng, 2, 3, 5) * 2)
    return [Call((_r(rng, 2, 3, 5), cache), names=("dx",))]


@case("silu_backward")
def _(rng, live):
    from ..layers.activations import silu_forward
    _, cache = silu_forward(_r(rng, 2, 3, 5) * 2)
    return [Call((_r(rng, 2, 3, 5), cache), names=("dx",))]


@case("softmax_forward")
def _(rng, live):
    return [Call((_r(rng, 2, 3, 5) * 3,), names=("y", "cache")),
            Call((_r(rng, 2, 4, 3),), dict(axis=1), names=("y", "cache"))]


@case("softmax_backward")
def _(rng, live):
    from ..layers.activations import softmax_forward
    return [Call((_r(rng, 2, 3, 5), softmax_forward(_r(rng, 2, 3, 5))[1]), names=("dx",)),
            Call((_r(rng, 2, 4, 3), softmax_forward(_r(rng, 2, 4, 3), axis=1)[1]), names=("dx",))]


@case("sdpa_forward")
def _(rng, live):
    return [Call((_r(rng, 2, 2, 4, 3), _r(rng, 2, 2, 5, 3), _r(rng, 2, 2, 5, 3)), names=("out", "cache"))]


@case("sdpa_backward")
def _(rng, live):
    from ..layers.attention import sdpa_forward
    _, cache = sdpa_forward(_r(rng, 2, 2, 4, 3), _r(rng, 2, 2, 5, 3), _r(rng, 2, 2, 5, 3))
    return [Call((_r(rng, 2, 2, 4, 3), cache), names=("dq", "dk", "dv"))]


@case("attention_backward")
def _(rng, live):
    from ..layers.attention import attention_forward
    D = 6
    _, cache = attention_forward(_r(rng, 2, 4, D), _r(rng, D, 3 * D) / 3, _r(rng, 3 * D) / 3,
                                 _r(rng, D, D) / 3, _r(rng, D) / 3, 2)
    return [Call((_r(rng, 2, 4, D), cache), names=("dx", "dqkv_w", "dqkv_b", "dproj_w", "dproj_b"))]


@case("label_embed_backward")
def _(rng, live):
    from ..layers.label_embed import label_embed_forward
    _, cache = label_embed_forward(np.array([3, 0, 3, 5, 1]), _r(rng, 6, 4))
    return [Call((_r(rng, 5, 4), cache), names=("dtable",))]


@case("layernorm_forward")
def _(rng, live):
    return [Call((_r(rng, 2, 3, 6) * 2 + 1,), names=("out", "cache")),
            Call((_r(rng, 2, 3, 6), _r(rng, 6), _r(rng, 6)), names=("out", "cache")),
            Call((_r(rng, 2, 6),), dict(eps=1e-2), names=("out", "cache"))]


@case("layernorm_backward")
def _(rng, live):
    from ..layers.layernorm import layernorm_forward
    _, plain = layernorm_forward(_r(rng, 2, 3, 6) * 2 + 1)
    _, affine = layernorm_forward(_r(rng, 2, 3, 6), _r(rng, 6), _r(rng, 6))
    return [Call((_r(rng, 2, 3, 6), plain), names=("dx", "dgamma", "dbeta")),
            Call((_r(rng, 2, 3, 6), affine), names=("dx", "dgamma", "dbeta"))]


@case("linear_forward")
def _(rng, live):
    return [Call((_r(rng, 2, 3, 5), _r(rng, 5, 4), _r(rng, 4)), names=("out", "cache")),
            Call((_r(rng, 7, 5), _r(rng, 5, 2)), names=("out", "cache")),
            Call((_r(rng, 2, 3), _r(rng, 5, 4)), raises=("ValueError", "features"))]


@case("linear_backward")
def _(rng, live):
    from ..layers.linear import linear_forward
    _, with_b = linear_forward(_r(rng, 2, 3, 5), _r(rng, 5, 4), _r(rng, 4))
    _, no_b = linear_forward(_r(rng, 7, 5), _r(rng, 5, 2))
    return [Call((_r(rng, 2, 3, 4), with_b), names=("dx", "dw", "db")),
            Call((_r(rng, 7, 2), no_b), dict(need_dx=False), names=("dx", "dw", "db"))]


@case("modulate_forward")
def _(rng, live):
    return [Call((_r(rng, 2, 3, 4), _r(rng, 2, 4), _r(rng, 2, 4)), names=("out", "cache"))]


@case("modulate_backward")
def _(rng, live):
    from ..layers.modulate import modulate_forward
    _, cache = modulate_forward(_r(rng, 2, 3, 4), _r(rng, 2, 4), _r(rng, 2, 4))
    return [Call((_r(rng, 2, 3, 4), cache), names=("dx", "dshift", "dscale"))]


@case("gated_residual_backward")
def _(rng, live):
    from ..layers.modulate import gated_residual_forward
    _, cache = gated_residual_forward(_r(rng, 2, 3, 4), _r(rng, 2, 3, 4), _r(rng, 2, 4))
    return [Call((_r(rng, 2, 3, 4), cache), names=("dx", "dbranch", "dgate"))]


@case("patch_embed_backward")
def _(rng, live):
    from ..layers.patchify import patch_embed_forward
    _, cache = patch_embed_forward(_r(rng, 2, 3, 4, 4), _r(rng, 12, 5), _r(rng, 5), 2)
    return [Call((_r(rng, 2, 4, 5), cache), names=("dx", "dw", "db")),
            Call((_r(rng, 2, 4, 5), cache), dict(need_dx=False), names=("dx", "dw", "db"))]


@case("unpatchify_hwc_backward")
def _(rng, live):
    from ..layers.patchify import unpatchify_hwc_forward
    _, cache = unpatchify_hwc_forward(_r(rng, 2, 4, 12), 2, 3, 4, 4)
    return [Call((_r(rng, 2, 3, 4, 4), cache), names=("dtokens",))]


@case("timestep_features")
def _(rng, live):
    return [Call((np.array([0, 1, 250, 999]),), dict(dim=16), names=("features",)),
            Call((np.array([3.5, 700.0]),), dict(dim=9, max_period=100), names=("features",))]


@case("get_2d_sincos_pos_embed")
def _(rng, live):
    return [Call((16, 3, 5), names=("table",)),  # a non-square grid: rows and columns told apart
            Call((8, 2), names=("table",)),  # grid_w left out: a square grid
            Call((6, 2, 2), names=("table",), raises=("ValueError", "divisible by 4"))]


@case("cross_attention_backward")
def _(rng, live):
    from ..layers.cross_attention import cross_attention_forward
    D = 6
    ws = [a for _ in range(4) for a in (_r(rng, D, D) / 3, _r(rng, D) / 3)]
    _, cache = cross_attention_forward(_r(rng, 2, 4, D), _r(rng, 2, 2, D), *ws, 2)
    return [Call((_r(rng, 2, 4, D), cache), names=("dx", "dctx", "dq_w", "dq_b", "dk_w", "dk_b", "dv_w", "dv_b",
                                                    "dproj_w", "dproj_b"))]


@case("final_layer_backward")
def _(rng, live):
    from ..layers.final_layer import final_layer_forward
    D, F = 6, 8
    _, adaptive = final_layer_forward(_r(rng, 2, 4, D), _r(rng, 2, D), _r(rng, D, F) / 3, _r(rng, F),
                                      _r(rng, D, 2 * D) / 3, _r(rng, 2 * D))
    _, plain = final_layer_forward(_r(rng, 2, 4, D), _r(rng, 2, D), _r(rng, D, F) / 3, _r(rng, F))
    names = ("dx", "dc", "dw", "db", "dada_w", "dada_b")
    return [Call((_r(rng, 2, 4, F), adaptive), names=names), Call((_r(rng, 2, 4, F), plain), names=names)]


# The block and the model ------------------------------------------------------------------------

def _block_params(rng, pre, D, H, gated=True):
    shapes = {"adaLN_modulation.1.w": (D, (6 if gated else 4) * D), "adaLN_modulation.1.b": ((6 if gated else 4) * D,),
              "attn.qkv.w": (D, 3 * D), "attn.qkv.b": (3 * D,), "attn.proj.w": (D, D), "attn.proj.b": (D,),
              "mlp.fc1.w": (D, H), "mlp.fc1.b": (H,), "mlp.fc2.w": (H, D), "mlp.fc2.b": (D,)}
    # every weight random, the zero-initialised adaLN ones too, so each term is seen
    return {pre + k: rng.standard_normal(s) / np.sqrt(s[0]) for k, s in shapes.items()}


@case("adaln_block_forward")
def _(rng, live):
    return [Call((_block_params(rng, "blocks.0.", 6, 8), "blocks.0.", _r(rng, 2, 4, 6), _r(rng, 2, 6), 2),
                 names=("out", "cache")),
            Call((_block_params(rng, "blocks.1.", 6, 8, gated=False), "blocks.1.", _r(rng, 2, 4, 6),
                  _r(rng, 2, 6), 2), dict(gated=False), names=("out", "cache"))]


@case("adaln_block_backward")
def _(rng, live):
    from ..blocks import adaln_block_forward
    _, gated = adaln_block_forward(_block_params(rng, "blocks.0.", 6, 8), "blocks.0.", _r(rng, 2, 4, 6),
                                   _r(rng, 2, 6), 2)
    _, plain = adaln_block_forward(_block_params(rng, "blocks.1.", 6, 8, gated=False), "blocks.1.",
                                   _r(rng, 2, 4, 6), _r(rng, 2, 6), 2, gated=False)
    return [Call((_r(rng, 2, 4, 6), gated), names=("dx", "dc", "grads")),
            Call((_r(rng, 2, 4, 6), plain), names=("dx", "dc", "grads"))]


@case("blocks_backward")
def _(rng, live):
    from ..blocks import adaln_block_forward
    x, c, caches = _r(rng, 2, 4, 6), _r(rng, 2, 6), []
    for i in range(3):
        x, cache = adaln_block_forward(_block_params(rng, f"blocks.{i}.", 6, 8), f"blocks.{i}.", x, c, 2)
        caches.append(cache)
    return [Call((_r(rng, 2, 4, 6), caches, live["design"], live["hand_over"]), names=("dh", "dcond"),
                 returns_groups=True)]


# Diffusion ---------------------------------------------------------------------------------------

def _t(*t):
    return np.array(t, dtype=np.int64)


@case("GaussianDiffusion.q_sample")
def _(rng, live):
    return [Call((live["diffusion"], _r(rng, 3, 2, 3, 3), _t(0, 500, 999), _r(rng, 3, 2, 3, 3)), names=("x_t",))]


@case("GaussianDiffusion.q_posterior_mean_variance")
def _(rng, live):
    return [Call((live["diffusion"], _r(rng, 3, 2, 3, 3), _r(rng, 3, 2, 3, 3), _t(0, 1, 640)),
                 names=("mean", "variance", "log_variance"))]


@case("GaussianDiffusion.p_mean_variance")
def _(rng, live):
    x_t = _r(rng, 3, 2, 3, 3)
    return [Call((live["diffusion"], np.tanh(_r(rng, 3, 4, 3, 3)), x_t, _t(0, 1, 640)), names=("out",)),
            Call((live["diffusion"], np.tanh(_r(rng, 3, 4, 3, 3)) * 3, x_t * 2, _t(3, 20, 999)),
                 dict(clip_denoised=True), names=("out",)),
            Call((live["fixed"], _r(rng, 3, 2, 3, 3), x_t, _t(0, 7, 300)), names=("out",))]


@case("GaussianDiffusion.p_sample")
def _(rng, live):
    return [Call((live["diffusion"], live["model_fn"], _r(rng, 3, 2, 3, 3), _t(0, 1, 640)),
                 dict(noise=_r(rng, 3, 2, 3, 3)), names=("out",)),
            Call((live["diffusion"], live["model_fn"], _r(rng, 3, 2, 3, 3), _t(5, 100, 999)),
                 dict(noise=_r(rng, 3, 2, 3, 3), clip_denoised=True), names=("out",))]


@case("GaussianDiffusion.ddim_sample")
def _(rng, live):
    return [Call((live["ddim"], live["model_fn"], _r(rng, 3, 2, 3, 3), _t(0, 4, 9)),
                 dict(noise=_r(rng, 3, 2, 3, 3)), names=("out",)),
            Call((live["ddim"], live["model_fn"], _r(rng, 3, 2, 3, 3), _t(1, 5, 8)),
                 dict(noise=_r(rng, 3, 2, 3, 3), eta=0.5, clip_denoised=True), names=("out",))]


@case("flow_losses")
def _(rng, live):
    x0, noise = np.tanh(_r(rng, 3, 2, 3, 3)), _r(rng, 3, 2, 3, 3)
    return [Call((_r(rng, 3, 2, 3, 3), x0, noise), names=("out",)),  # dloss left out: the batch mean
            Call((_r(rng, 3, 2, 3, 3), x0, noise, np.array([0.5, -1.0, 2.0])), names=("out",)),
            Call((_r(rng, 3, 4, 3, 3), x0, noise), names=("out",), raises=("ValueError", "velocity only"))]


@case("normal_kl_grad_logvar2")
def _(rng, live):
    return [Call(tuple(_r(rng, 2, 3, 4) for _ in range(4)), names=("dlogvar2",))]


@case("discretized_gaussian_log_likelihood_grad_log_scales")
def _(rng, live):
    x = np.round(rng.uniform(-1, 1, (2, 3, 4)) * 127.5) / 127.5
    x[0, 0, :2] = -1.0, 1.0  # both edges of the pixel range
    return [Call((x, x + 0.02 * _r(rng, 2, 3, 4), -3 + 0.5 * _r(rng, 2, 3, 4)), names=("dlog_scales",))]


@case("vb_bits_and_grad")
def _(rng, live):
    d = live["diffusion"]
    x0, noise, t = np.tanh(_r(rng, 3, 2, 3, 3)), _r(rng, 3, 2, 3, 3), _t(0, 1, 640)
    x_t = d.q_sample(x0, t, noise)
    out = np.concatenate([noise + 0.1 * _r(rng, 3, 2, 3, 3), np.tanh(_r(rng, 3, 2, 3, 3))], axis=1)
    return [Call((d, out, x0, x_t, t, np.array([0.5, 1.0, 2.0])), names=("vb", "d_v"))]


@case("guided_output")
def _(rng, live):
    return [Call((_r(rng, 4, 6, 2, 2), 4.0, 3), names=("out",)),
            Call((_r(rng, 2, 4, 2, 2), 1.5, 2), names=("out",))]


# The training step -------------------------------------------------------------------------------

@case("adamw_update")
def _(rng, live):
    def call(wd, step):
        b1, b2 = 0.9, 0.999
        return Call((_r(rng, 3, 4), _r(rng, 3, 4), 0.1 * _r(rng, 3, 4), np.abs(_r(rng, 3, 4)) * 0.01,
                     1e-2, b1, b2, 1e-8, wd, 1e-2 / (1 - b1 ** step), (1 - b2 ** step) ** 0.5),
                    names=("p", "m", "v"), inplace=(0, 2, 3))
    return [call(0.0, 1), call(0.1, 7)]


@case("ema_step")
def _(rng, live):
    return [Call((_r(rng, 3, 4), _r(rng, 3, 4), 0.9), names=("e",), inplace=(0,)),
            Call((_r(rng, 5), _r(rng, 5), 0.0), names=("e",), inplace=(0,))]


# The latent space and the experiments ----------------------------------------------------------

def _moments(rng):
    moments = _r(rng, 2, 6, 2, 3)
    moments[0, 3:, 0, :] = 25.0, -35.0, 1.0  # raw log-variances above, below and inside the clip
    return moments


@case("posterior_forward")
def _(rng, live):
    return [Call((_moments(rng), _r(rng, 2, 3, 2, 3)), names=("z", "kl", "cache"))]


@case("posterior_backward")
def _(rng, live):
    from ..latent.autoencoder import posterior_forward
    _, _, cache = posterior_forward(_moments(rng), _r(rng, 2, 3, 2, 3))
    return [Call((_r(rng, 2, 3, 2, 3), _r(rng, 2, 3, 2, 3), cache), names=("dmoments",))]


@case("bootstrap")
def _(rng, live):
    correct = rng.random(12) < 0.4
    return [Call((correct, _r(rng, 12, 3), _r(rng, 20, 3) + 0.5, 6), dict(seed=3), names=("replicates",))]


@case("interval")
def _(rng, live):
    return [Call((0.3, _r(rng, 50) * 0.02), names=("interval",)),
            Call((np.float64(12.5), _r(rng, 8)), names=("interval",))]
