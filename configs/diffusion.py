"""Class-conditional diffusion: train a denoiser (`train_diffusion`), then sample a sweep (`sample`).

Variants (`--config configs/diffusion.py:VARIANT`): `unet` (default; an ADM-style UNet) and
`dit` train on the embedded digits at 16 px; `ldm` trains the UNet on the latents of a
`train_autoencoder` run (`--config.latent.autoencoder_run=DIR`, configs/autoencoder.py);
`sample` runs a sampling sweep from a trained run:

  python -m jaxsynth.main --config configs/diffusion.py --workdir runs/diff \
      --config.train.steps=2000
  python -m jaxsynth.main --config configs/diffusion.py:sample --workdir runs/sweep \
      --config.sample.run_dir=runs/diff --config.sample.budget=balance

A sweep takes the model, data, noise schedule and conditioning from the trained run's
config.json; its own config supplies `seed`, `mesh` and the `sample.*` keys.

Group-conditioned generators (FairDiff-style group balancing) need data with group ids (an .npz
with `{split}_groups`; the group id is column 0 of (N, G)) and `diffusion.condition=group` or
`class_group`. A sweep of a class_group run draws `sample.cell_counts` (budget=counts) or tops
up every (class, group) cell (budget=balance) and writes `groups` beside `labels`; a sweep of a
group run writes labels 0 (num_classes 1 in its manifest) and the groups (see
jaxsynth/data/conditions.py).
"""

import ml_collections

from jaxsynth.config import base_config
from jaxsynth.models.denoisers import denoiser_model_config
from jaxsynth.synthesis.filters import filter_config

VARIANTS = ("unet", "dit", "ldm", "sample")


def get_config(variant: str | None = None):
  """Returns the diffusion config; `variant` is unet | dit | ldm (train_diffusion) or sample."""
  variant = variant or "unet"
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/diffusion.py variant {variant!r}; use one of "
                     f"{', '.join(VARIANTS)}")
  config = base_config(task="sample" if variant == "sample" else "train_diffusion")
  config.data.source = "digits"
  config.data.image_size = 16       # images are scaled to [-1, 1] by data.mean = data.std = 0.5

  config.model = model = denoiser_model_config()
  model.name = "dit" if variant == "dit" else "unet"
  model.unet.channels = (32, 64)    # a small UNet for 16 px: attention at 8 px and in the middle
  model.unet.attn_resolutions = (8,)
  model.unet.norm_groups = 8
  model.dit.variant = "DiT-S/2"

  train = config.train
  train.batch_size = 64
  train.steps = 5000                # diffusion runs are counted in steps (train.epochs unused)
  train.optimizer = "adamw"
  train.learning_rate = 2e-4
  train.grad_clip = 1.0
  train.ema_decay = 0.999
  train.log_every = 50
  train.eval_every = 500            # steps between validation losses (diffusion.val_batches)
  train.checkpoint_every = 500
  train.select_metric = "loss"      # the `best` checkpoint has the lowest validation loss
  train.select_mode = "min"
  train.sample_every = 500          # steps between per-class sample grids (0 = none)

  config.diffusion = d = ml_collections.ConfigDict()
  d.condition = "class"             # the denoiser's label: class | group | class_group (cell id
  #                                   class * num_groups + group); group* need data with groups
  d.schedule = "linear"             # linear | cosine | scaled_linear (beta schedule)
  d.num_timesteps = 1000            # T
  d.prediction = "eps"              # what the denoiser outputs: eps | x0 | v
  d.weighting = "none"              # loss weighting: none (L_simple) | min_snr
  d.snr_gamma = 5.0                 # gamma of min_snr
  d.label_dropout = 0.1             # probability of the null label (classifier-free guidance)
  d.val_batches = 4                 # eval_batch_size batches of val loss per evaluation; 0 = off
  # Preview grids during training (grids/step-NNNNNN.png and TensorBoard), from EMA params:
  d.sampler = "ddim"                # ddpm | ddim | dpm_solver_pp_2m
  d.sample_steps = 50               # model evaluations per sample
  d.cfg_scale = 3.0                 # classifier-free guidance w (DiffuPT eq. 5); 0 = conditional
  d.grid_per_class = 8              # samples per class (one row per class)

  if variant == "ldm":
    # Latent diffusion: the UNet denoises the latents of a train_autoencoder run (which must
    # have been trained on the same data keys); WORKDIR/latents caches them.
    config.latent = latent = ml_collections.ConfigDict()
    latent.autoencoder_run = ""     # the train_autoencoder --workdir (required)
    latent.checkpoint = "best"      # best (highest val PSNR) | latest
    model.unet.attn_resolutions = (4,)
    d.val_batches = 2

  config.sample = s = ml_collections.ConfigDict()
  s.run_dir = ""                    # the train_diffusion workdir to sample from (required)
  s.checkpoint = "latest"           # latest | best (lowest validation loss)
  s.budget = "balance"              # counts | balance | ratio: how many samples per class (per
  #                                   group / cell for a condition=group / class_group run)
  s.class_counts = ()               # counts: samples per class, e.g. (500, 0)
  s.group_counts = ()               # counts, condition=group runs: samples per group
  s.cell_counts = ()                # counts, condition=class_group runs: num_classes*num_groups
  #                                   counts, class-major: (c0g0, c0g1, ..., c1g0, ...)
  s.per_class = 0                   # balance: top every class (group, cell) up to this; 0 = the
  #                                   largest one
  s.total = 0                       # ratio: total samples
  s.ratio = ()                      # ratio: fraction per class, e.g. (0.3, 0.7) (normalised;
  #                                   condition=class runs only)
  s.shard_size = 256                # samples per shard file
  s.batch_size = 64                 # global sampling batch (a multiple of the device count)
  s.sampler = "ddim"                # ddpm | ddim | dpm_solver_pp_2m
  s.num_steps = 250                 # model evaluations per sample (DiffuPT: DDIM 250)
  s.eta = 0.0                       # DDIM eta
  s.spacing = "uniform"             # uniform | quadratic timestep spacing
  s.cfg_scale = 3.0                 # classifier-free guidance w (DiffuPT: 3); 0 = conditional
  s.clip_x0 = 1.0                   # clip predicted x0 to [-c, c] each step; 0 = off
  s.dtype = ""                      # denoiser compute dtype: "" = as trained | float32 | bfloat16 | auto
                                    # (auto: bf16 on GPU/TPU and AVX512-BF16/AMX CPUs, float32 elsewhere)
  #                                   (bfloat16: ~1.9x the images/s of float32 on AVX512-BF16 CPUs)
  # A filtered sweep (sample.filter.name = classifier | realism | realism_class) keeps drawing fresh
  # samples for each class until that many are accepted, within max_attempts x its budget:
  s.filter = filter_config()
  s.max_attempts = 10.0
  return config
