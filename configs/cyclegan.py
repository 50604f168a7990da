"""CycleGAN translation baseline (task `train_gan`, model.name=cyclegan; Zhu et al. 2017, as in
DiffuPT §2.2.1): turn the train images of a majority class into a minority class.

  python -m jaxsynth.main --config configs/cyclegan.py --workdir runs/cyclegan \
      --config.data.source=npz --config.data.path=../shared/data/breastmnist.npz \
      --config.data.image_size=28 --config.cyclegan.source_class=1 \
      --config.cyclegan.target_class=0
  python -m jaxsynth.main --config configs/diffusion.py:sample --workdir runs/cyclegan_sweep \
      --config.sample.run_dir=runs/cyclegan --config.sample.budget=counts \
      --config.sample.class_counts='(300, 0)'

`:tiny` is the tests' size. The paper's settings: ResNet generators (6 blocks at 128 px, 9 at 256),
70x70 PatchGANs, least-squares losses, lambda = 10, identity 0.5 lambda, Adam(2e-4, b1 = 0.5),
batch 1, 100 epochs then 100 of linear decay (here: train.schedule, e.g. cosine), and a history
buffer of 50 fakes for the critics (not kept here). StarGANv2, MW-GAN and UNSB are out of scope.
"""

import ml_collections

from jaxsynth.config import base_config
from jaxsynth.models.cyclegan import cyclegan_model_config


def get_config(variant: str | None = None):
  """Returns the CycleGAN config; `variant` is '' or 'tiny'."""
  if variant not in (None, "", "tiny"):
    raise ValueError(f"unknown configs/cyclegan.py variant {variant!r}; use none or tiny")
  config = base_config(task="train_gan")
  config.data.image_size = 16
  config.model = m = cyclegan_model_config()
  m.blocks = 6

  config.cyclegan = c = ml_collections.ConfigDict()
  c.source_class = 0                # domain X: a majority class, translated ...
  c.target_class = 1                # ... into domain Y: the minority class to make
  c.cycle_weight = 10.0             # lambda of eq. 1
  c.identity_weight = 0.5           # lambda_id, times lambda; 0 = no identity term

  train = config.train
  train.batch_size = 8
  train.epochs = 50.0               # an epoch: ceil(max(|X|, |Y|) / batch_size) steps
  train.optimizer = "adam"
  train.learning_rate = 2e-4
  train.adam_betas = (0.5, 0.999)
  train.schedule = "constant"
  train.log_every = 20
  train.eval_every = 0
  train.checkpoint_every = 200
  train.select_metric = ""
  train.sample_every = 200          # steps between translation grids (0 = none)

  if variant == "tiny":
    config.data.image_size = 8
    config.data.threads = 2
    m.update(generator_width=8, downsamplings=1, blocks=1, critic_width=8, critic_layers=1)
    train.update(batch_size=4, steps=4, log_every=1, checkpoint_every=2, sample_every=2,
                 keep_checkpoints=10)
  return config
