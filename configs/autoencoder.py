"""First-stage autoencoders of latent diffusion (task `train_autoencoder`).

Variants (`--config configs/autoencoder.py:VARIANT`): `vq` (default; VQGAN-style, codebook and
commitment losses) and `kl` (LDM's KL-regularised autoencoder), each on the embedded digits at
16 px with a downsampling factor of 4; add `:tiny` (e.g. `vq:tiny`) for the tests' size.

  python -m jaxsynth.main --config configs/autoencoder.py:vq --workdir runs/vq
  python -m jaxsynth.main --config configs/autoencoder.py:kl --workdir runs/kl \
      --config.data.source=npz --config.data.path=../shared/data/breastmnist_64.npz

The run leaves grids/step-N.png (val originals above their reconstructions), log.jsonl with
the losses (and codebook perplexity / usage for VQ), and metrics.json with the validation L1,
PSNR, SSIM and codebook usage. The adversarial PatchGAN term (VQGAN eq. 5-7) is off by default;
`--config.loss.disc_weight=0.8 --config.loss.disc_start=N` switches it on after N steps.
"""

from jaxsynth.config import base_config
from jaxsynth.models.autoencoder import AUTOENCODERS, autoencoder_model_config

import ml_collections


def get_config(variant: str | None = None):
  """Returns the autoencoder config; `variant` is vq | kl, optionally with `:tiny`."""
  name, _, size = (variant or "vq").partition(":")
  if name not in AUTOENCODERS or size not in ("", "tiny"):
    raise ValueError(f"unknown configs/autoencoder.py variant {variant!r}; use vq, kl, vq:tiny "
                     "or kl:tiny")
  config = base_config(task="train_autoencoder")
  config.data.source = "digits"
  config.data.image_size = 16

  config.model = m = autoencoder_model_config()
  m.name = name
  m.channels = (32, 64, 64)         # factor 4: 16 px -> 4x4 latents
  m.norm_groups = 8
  m.res_blocks = 1
  m.latent_channels = 4 if name == "kl" else 8
  m.num_codes = 256

  train = config.train
  train.batch_size = 32
  train.eval_batch_size = 64
  train.steps = 2000
  train.optimizer = "adam"
  train.learning_rate = 4.5e-4       # VQGAN's base rate (4.5e-6 x batch 100 in its configs)
  train.adam_betas = (0.5, 0.9)      # VQGAN / LDM autoencoders
  train.log_every = 50
  train.eval_every = 500
  train.checkpoint_every = 500
  train.select_metric = "psnr"       # the `best` checkpoint has the highest validation PSNR
  train.select_mode = "max"
  train.val_batches = 0              # eval_batch_size batches per validation; 0 = the whole split
  train.sample_every = 500           # steps between reconstruction grids (0 = none)
  train.grid_images = 8              # val images in each grid (a row of originals, then theirs)
  train.restart_every = 200          # vq: steps between dead-code restarts (0 = never)
  train.restart_threshold = 1e-3     # vq: usage share below which a code counts as dead

  config.loss = loss = ml_collections.ConfigDict()
  loss.l1_weight = 1.0               # VQGAN: L1 + LPIPS
  loss.l2_weight = 0.0
  loss.ssim_weight = 0.2             # 1 - SSIM on [0, 1] images (needs >= 11 px)
  loss.lpips_weight = 0.0            # LPIPS (VQGAN / LDM: 1.0), from weights given by path:
  loss.lpips_backbone = ""           #   torchvision's vgg16 (or alexnet) state dict
  loss.lpips_lin = ""                #   the lpips package's weights/v0.1/vgg.pth (or alex.pth)
  loss.lpips_net = "vgg"             #   vgg | alex
  loss.kl_weight = 1e-6              # kl: LDM's KL weight
  loss.disc_weight = 0.0             # PatchGAN term (VQGAN: 0.8); 0 = no critic
  loss.disc_start = 0                # steps before the adversarial term switches on

  if size == "tiny":
    config.data.image_size = 12
    m.channels, m.norm_groups, m.latent_channels, m.num_codes = (8, 16), 4, 3, 16
    m.disc_channels, m.disc_layers = 8, 2
    train.update(batch_size=8, eval_batch_size=16, steps=6, log_every=2, eval_every=3,
                 checkpoint_every=3, sample_every=3, grid_images=4, restart_every=2)
  return config
