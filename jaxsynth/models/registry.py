"""Classifier models by `config.model.name`."""

from __future__ import annotations

import jax.numpy as jnp

from jaxsynth.errors import ConfigError
from jaxsynth.models import resnet

CLASSIFIERS = {f"resnet{d}": d for d in resnet.STAGE_BLOCKS}


def make_classifier(model_cfg, num_classes: int):
  """Builds the Flax classifier named by model.name for `num_classes` outputs."""
  if model_cfg.name not in CLASSIFIERS:
    raise ConfigError(f"config key 'model.name' has unknown value {model_cfg.name!r}; "
                      f"use one of {', '.join(CLASSIFIERS)}")
  if model_cfg.stem not in ("small", "imagenet"):
    raise ConfigError(f"config key 'model.stem' has bad value {model_cfg.stem!r}; "
                      "use small or imagenet")
  return resnet.resnet(CLASSIFIERS[model_cfg.name], num_classes, width=model_cfg.width,
                       stem=model_cfg.stem, dtype=jnp.dtype(model_cfg.dtype))
