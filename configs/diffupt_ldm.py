"""DiffuPT with its latent diffusion generator, at the paper's sizes (task `recipe`).

DiffuPT (glaucoma fundus, 512x512x3) pretrains the classifier on a balanced synthetic set drawn
from a latent diffusion model, then fine-tunes it on the real images. Its generator: an
autoencoder with a downsampling factor f = 16 and 16 latent channels (512 px <-> 32x32x16),
trained with a perceptual loss; a class-conditional UNet on those latents; classifier-free
guidance w = 3; DDIM with 250 steps. Give the real set as an image folder (or an .npz):

  python -m jaxsynth.main --config configs/diffupt_ldm.py --workdir runs/diffupt_ldm \
      --config.data.path=FUNDUS_DIR
  python -m jaxsynth.main --config configs/diffupt_ldm.py:tiny --workdir /tmp/dldm   # seconds

Stages (jaxsynth/recipes/diffupt.py): autoencoder (train_autoencoder, KL) -> generator
(train_diffusion on the cached latents) -> sample (decoded to images) -> baseline -> filter
(classifier) -> pretrain -> finetune; report.md compares finetune with the baseline. Set
generator.latent.autoencoder_run=DIR to use a finished train_autoencoder run instead of the
first stage. The perceptual term needs the public LPIPS weights by path (nothing is
downloaded): --config.generator.autoencoder.loss.lpips_weight=1.0
--config.generator.autoencoder.loss.lpips_backbone=vgg16.pth
--config.generator.autoencoder.loss.lpips_lin=vgg.pth; without them the autoencoder trains on
L1 + SSIM. `tiny` is the same recipe at 12 px on the embedded digits (what the tests run).
"""

from configs import synthesis

VARIANTS = ("", "tiny")


def get_config(variant: str | None = None):
  """Returns the DiffuPT-LDM recipe config; `variant` is "" (the paper's sizes) or tiny."""
  variant = variant or ""
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/diffupt_ldm.py variant {variant!r}; use tiny or none")
  if variant == "tiny":
    return synthesis.get_config("diffupt_ldm_tiny")
  config = synthesis.get_config("diffupt_ldm")
  config.data.update(source="folder", path="", image_size=512, channels=3,
                     imbalance_ratio=0.0)
  config.train.update(batch_size=32, eval_batch_size=64)
  g = config.generator
  ae = g.autoencoder
  # LDM's KL autoencoder of factor 16 (kl-f16): 5 levels, 16 latent channels
  ae.model.update(name="kl", channels=(128, 128, 256, 256, 512), res_blocks=2, attention=True,
                  norm_groups=32, latent_channels=16, disc_channels=64, disc_layers=3)
  ae.train.update(batch_size=8, eval_batch_size=16, steps=50000, eval_every=2000,
                  checkpoint_every=2000, sample_every=2000, val_batches=8)
  # L1 + SSIM (+ LPIPS 1.0 once its weights are given), PatchGAN after 50k steps as in LDM
  ae.loss.update(l1_weight=1.0, ssim_weight=0.2, kl_weight=1e-6, disc_weight=0.5,
                 disc_start=50001)
  # a class-conditional UNet on 32x32x16 latents: attention at 16 and 8 px (LDM's f16 setup)
  g.model.unet.update(channels=(192, 384, 384), res_blocks=2, attn_resolutions=(16, 8),
                      head_dim=32, norm_groups=32)
  g.train.update(batch_size=32, steps=100000, eval_every=5000, checkpoint_every=5000,
                 sample_every=10000)
  g.sample.update(sampler="ddim", num_steps=250, cfg_scale=3.0, batch_size=16)
  config.recipe.cfg_scale = 3.0
  return config
