"""Diffusion "transfer learning" for histopathology with a latent diffusion generator (task
`recipe`, pretrain_finetune).

The histopathology study (PCam, 96x96 patches) pretrains a classifier on images sampled from a
VAE + denoiser latent diffusion model with a cosine noise schedule, then fine-tunes it on the real
patches (AUC 90.17 -> 93.54); it found the DiT denoiser the better generator by FID. Here: a KL
autoencoder of factor 4 (96 px <-> 24x24x4 latents), a class-conditional UNet (`unet`) or DiT
(`dit`) on the latents, cosine schedule; give the patches as an .npz or image folder:

  python -m jaxsynth.main --config configs/histo_ldm.py:dit --workdir runs/histo_dit \
      --config.data.path=PCAM.npz
  python -m jaxsynth.main --config configs/histo_ldm.py:unet:tiny --workdir /tmp/hldm  # seconds

Stages (jaxsynth/recipes/diffupt.py): autoencoder -> generator -> sample -> baseline ->
pretrain -> finetune. `:tiny` (`unet:tiny`, `dit:tiny`) is the same recipe at 12 px on the
embedded digits (what the tests run).
"""

from configs import synthesis

DENOISERS = ("unet", "dit")


def get_config(variant: str | None = None):
  """Returns the histopathology LDM recipe; `variant` is unet | dit, optionally with `:tiny`."""
  name, _, size = (variant or "unet").partition(":")
  if name not in DENOISERS or size not in ("", "tiny"):
    raise ValueError(f"unknown configs/histo_ldm.py variant {variant!r}; use unet, dit, "
                     "unet:tiny or dit:tiny")
  tiny = size == "tiny"
  config = synthesis.get_config("pretrain_finetune_ldm" + ("_tiny" if tiny else ""))
  g = config.generator
  g.diffusion.schedule = "cosine"
  g.model.name = name
  if name == "dit":   # patch 2 over the latent: 144 tokens at 96 px (DiT-S/2 widths)
    g.model.dit.variant = "DiT-S/2"
    if tiny:
      g.model.dit.update(depth=2, hidden_size=32, num_heads=2)
  if tiny:
    return config
  config.data.update(source="npz", path="", image_size=96, channels=3, imbalance_ratio=0.0)
  config.train.update(batch_size=128)
  # LDM's KL autoencoder of factor 4 (kl-f4): 3 levels, 4 latent channels
  g.autoencoder.model.update(name="kl", channels=(128, 256, 512), res_blocks=2, attention=True,
                             norm_groups=32, latent_channels=4)
  g.autoencoder.train.update(batch_size=16, steps=30000, eval_every=2000,
                             checkpoint_every=2000, sample_every=2000, val_batches=8)
  g.model.unet.update(channels=(128, 256, 256), res_blocks=2, attn_resolutions=(12, 6),
                      head_dim=32, norm_groups=32)
  g.train.update(batch_size=64, steps=100000, eval_every=5000, checkpoint_every=5000,
                 sample_every=10000)
  g.sample.update(sampler="ddim", num_steps=250, cfg_scale=3.0, batch_size=64)
  return config
