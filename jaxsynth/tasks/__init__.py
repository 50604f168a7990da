"""Tasks selected by `config.task`; each is a function (config, workdir, overwrite) -> None."""

from __future__ import annotations

import importlib

# task name -> "module:function"; later issues register their tasks here.
TASKS = {
    "train_classifier": "jaxsynth.tasks.classifier:train_and_evaluate",
    "evaluate": "jaxsynth.tasks.classifier:evaluate",
    "train_diffusion": "jaxsynth.tasks.diffusion:train_diffusion",
    "train_autoencoder": "jaxsynth.tasks.autoencoder:train_autoencoder",
    "train_gan": "jaxsynth.tasks.gan:train_gan",
    "sample": "jaxsynth.tasks.sample:sample",
    "filter": "jaxsynth.tasks.filter:filter_sweep",
    "recipe": "jaxsynth.tasks.recipe:recipe",
}


def get_task(name: str):
  """Imports and returns the function that runs task `name`."""
  module, function = TASKS[name].split(":")
  return getattr(importlib.import_module(module), function)
