"""Every differentiable piece of DiT, one concept per file, each forward beside its backward.

The layer contract (docs/design.md): `out, cache = name_forward(inputs..., params...)` is pure, and
`grads... = name_backward(dout, cache)` returns fresh arrays in the order of the inputs.
"""
from .linear import linear_forward, linear_backward
from .layernorm import layernorm_forward, layernorm_backward
from .activations import (gelu_forward, gelu_backward, silu_forward, silu_backward,
                          softmax_forward, softmax_backward)
from .attention import (sdpa_forward, sdpa_backward, attention_forward, attention_backward)
from .cross_attention import cross_attention_forward, cross_attention_backward
from .mlp import mlp_forward, mlp_backward
from .modulate import (modulate_forward, modulate_backward, gated_residual_forward,
                       gated_residual_backward)
from .patchify import (patchify, unpatchify_chw, patch_embed_forward, patch_embed_backward,
                       unpatchify_hwc_forward, unpatchify_hwc_backward)
from .pos_embed import get_1d_sincos_pos_embed, get_2d_sincos_pos_embed
from .timestep_embed import (timestep_features, timestep_embedder_forward,
                             timestep_embedder_backward)
from .label_embed import (label_embed_forward, label_embed_backward, drop_labels, check_labels)
from .loss import mse_forward, mse_backward
from .conv2d import conv2d_forward, conv2d_backward, conv2d_output_size
from .groupnorm import groupnorm_forward, groupnorm_backward
from .upsample import upsample2x_forward, upsample2x_backward
from .final_layer import final_layer_forward, final_layer_backward
