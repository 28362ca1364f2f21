"""The Stable Diffusion VAE's files (diffusers' AutoencoderKL) read into minidit.latent.sd_vae."""
from ..latent.sd_vae import SDVAE, SDVAEConfig, config_from_weights, normalise_names, param_names
from .weights import read_config, read_state_dict, weight_file


def load_sd_vae(path, device=None):
    """An SDVAE from a diffusers AutoencoderKL: a folder (with `vae/` or the weights and config.json
    directly) or a weight file (.safetensors or .bin). Torch is never imported."""
    wf = weight_file(path, "vae")
    sd = normalise_names(read_state_dict(wf))
    conf = read_config(wf)
    cfg = SDVAEConfig.from_json(conf) if conf is not None else config_from_weights(sd)
    if "decoder.conv_in.weight" not in sd:
        raise ValueError(f"{wf}: not an AutoencoderKL (no decoder.conv_in.weight; is this the DiT's file?)")
    extra = sorted(set(sd) - set(param_names(cfg)))
    if extra:
        raise ValueError(f"{wf}: weights the config does not expect, e.g. {extra[:3]}")
    try:
        return SDVAE(sd, cfg, device)
    except ValueError as e:
        raise ValueError(f"{wf}: {e}") from None
