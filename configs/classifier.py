"""Train an image classifier on any data source.

Variants (`--config configs/classifier.py:VARIANT`): `digits` (default), `npz`, `folder`,
`tfds`, `synthetic`. Example on a MedMNIST file:

  python -m jaxsynth.main --config configs/classifier.py:npz \
      --config.data.path=../shared/data/pneumoniamnist.npz --workdir runs/pneu
"""

from jaxsynth.config import base_config


def get_config(variant: str | None = None):
  """Returns the classifier config; `variant` picks the data source."""
  config = base_config(task="train_classifier")
  config.data.source = variant or "digits"
  if config.data.source == "digits":
    config.data.image_size = 16
    config.data.imbalance_ratio = 10.0
  else:
    config.data.image_size = 28
  return config
