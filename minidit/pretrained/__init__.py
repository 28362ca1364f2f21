"""The paper's released models without PyTorch: readers for the files users download (PyTorch
zip-pickles through a closed-list unpickler, safetensors, diffusers folders), the mapping of the
released DiT's weights into minidit's parameters, and `python -m minidit.pretrained`, which
samples DiT-XL/2 and decodes with the Stable Diffusion VAE (minidit.latent.sd_vae)."""
