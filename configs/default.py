"""The main job: a ResNet-18 on the embedded long-tailed digits (runs in minutes on 2 CPU cores).

  python -m jaxsynth.main --config configs/default.py --workdir runs/default
"""

from configs import classifier


def get_config(variant: str | None = None):
  """Classifier on scikit-learn's real handwritten digits, long-tailed 10:1."""
  del variant
  config = classifier.get_config("digits")
  config.model.width = 32
  config.train.batch_size = 64
  config.train.epochs = 15.0
  config.train.schedule = "cosine"
  config.train.log_every = 5
  return config
