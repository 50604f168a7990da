"""Synthesis recipes (task `recipe`): generate what the minority classes lack, train a classifier
on real + synthetic data, and compare it with the baseline trained on the real data alone.

  python -m jaxsynth.main --config configs/synthesis.py:augment --workdir runs/augment
  python -m jaxsynth.main --config configs/synthesis.py:augment_tiny --workdir /tmp/aug

Variants: `augment` (ResNet-18 on the long-tailed digits, a 16 px UNet generator) and
`augment_tiny` (seconds; what the tests run). Keys:
  data, seed, mesh            shared by every stage (the real data set)
  model, train, evaluate      the classifier stages (baseline and recipe)
  recipe.name                 augment
  recipe.classifier           the classic recipe (loss and sampler) of the classifier stages
  recipe.generator_workdir    a finished train_diffusion run to use instead of training one
  recipe.baseline_workdir     a finished train_classifier run to use as the baseline
  generator.model / .train / .diffusion / .sample   the generator and its sweep
                              (generator.sample.budget=balance fills every class up to the
                              largest; budget=counts with class_counts adds N per class)
Stages, each in WORKDIR/<stage>/: generator -> sample -> baseline -> augmented; then
WORKDIR/report.md and metrics.json.
"""

import ml_collections

from configs import default, diffusion

VARIANTS = ("augment", "augment_tiny")


def get_config(variant: str | None = None):
  """Returns the synthesis recipe config of `variant`."""
  variant = variant or "augment"
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/synthesis.py variant {variant!r}; use one of "
                     f"{', '.join(VARIANTS)}")
  config = default.get_config()
  config.task = "recipe"
  config.recipe.name = variant.split("_")[0]
  config.recipe.classifier = "ce"
  config.recipe.generator_workdir = ""
  config.recipe.baseline_workdir = ""
  gen = diffusion.get_config("unet")
  config.generator = ml_collections.ConfigDict()
  for key in ("model", "train", "diffusion", "sample"):
    config.generator[key] = gen[key]
  config.generator.train.steps = 3000
  config.generator.sample.budget = "balance"
  config.generator.sample.num_steps = 50
  if variant.endswith("_tiny"):
    config.data.image_size = 8
    config.data.threads = 2
    config.model.width = 8
    config.train.update(batch_size=16, eval_batch_size=32, steps=6, eval_every=3, log_every=1)
    g = config.generator
    g.model.unet.update(channels=(16, 32), res_blocks=1, attn_resolutions=(), head_dim=8,
                        norm_groups=8, mid_attention=False)
    g.diffusion.update(num_timesteps=100, sample_steps=5, grid_per_class=2, val_batches=1)
    g.train.update(batch_size=16, eval_batch_size=32, steps=6, log_every=1, eval_every=3,
                   checkpoint_every=3, sample_every=0, keep_checkpoints=2)
    g.sample.update(num_steps=5, shard_size=64, batch_size=32, budget="counts",
                    class_counts=(4,) * 10)
  return config
