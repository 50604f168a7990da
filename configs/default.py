"""The main job: DiffuPT on the embedded long-tailed digits (scikit-learn's real 8x8 handwritten
digits, 10:1), end to end on 2 CPU cores in minutes, writing WORKDIR/report.md.

  python -m jaxsynth.main --config configs/default.py --workdir runs/default

Stages (jaxsynth/recipes/diffupt.py): a class-conditional UNet generator -> a balanced guided
sweep (CFG w = 3) -> the baseline ResNet-18 on the real data -> the classifier filter (judged by
the baseline) -> pretrain on the accepted synthetic set -> fine-tune on the real data; report.md
compares the fine-tuned classifier with the baseline. Everything is small (8 px, a 2-level
UNet, 1000 synthetic images) so it fits on a laptop; configs/synthesis.py:diffupt is the
full-size recipe.

  python -m jaxsynth.main --config configs/default.py:classifier --workdir runs/clf

is the plain classifier (ResNet-18, width 32, 16 px) that the other configs build on.
"""

from configs import classifier

VARIANTS = ("diffupt", "classifier")


def classifier_job():
  """ResNet-18 (width 32) on scikit-learn's real handwritten digits, long-tailed 10:1, 16 px."""
  config = classifier.get_config("digits")
  config.model.width = 32
  config.train.batch_size = 64
  config.train.epochs = 15.0
  config.train.schedule = "cosine"
  config.train.log_every = 5
  return config


def diffupt_job():
  """configs/synthesis.py:diffupt shrunk to minutes on 2 CPU cores (8 px: the digits' own size)."""
  from configs import synthesis  # pylint: disable=import-outside-toplevel  (it imports this file)
  config = synthesis.get_config("diffupt")
  config.data.image_size = 8
  config.train.update(log_every=20)
  g = config.generator
  g.model.unet.update(channels=(32, 64), attn_resolutions=(), mid_attention=True)
  # 2000 steps: EMA 0.995 (a 200-step window) so the first, random weights have left the average
  g.train.update(steps=2000, ema_decay=0.995, log_every=50, eval_every=500,
                 checkpoint_every=500, sample_every=0)
  g.diffusion.update(sample_steps=25, grid_per_class=8, val_batches=2)
  g.sample.update(num_steps=25, batch_size=100, shard_size=500)
  config.recipe.pretrain_size = 1000       # 100 per class before filtering
  # 15 epochs are ~100 steps: too few for DiffuPT's 1e-4 / 1e-5, so 10x each (ratio kept)
  config.recipe.pretrain_lr = 1e-3
  config.recipe.finetune_lr = 1e-4
  return config


def get_config(variant: str | None = None):
  """The main job (`diffupt`, the default) or the plain `classifier` job."""
  variant = variant or "diffupt"
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/default.py variant {variant!r}; use one of "
                     f"{', '.join(VARIANTS)}")
  return diffupt_job() if variant == "diffupt" else classifier_job()
