"""Tiny configs and checkpoint readers for training tests."""

from __future__ import annotations

import os

import numpy as np
import orbax.checkpoint as ocp

from configs import default


def tiny_config(steps: int = 6, **overrides):
  """The default job shrunk to seconds: 8 px digits, width-8 ResNet-18, batch 16."""
  config = default.get_config()
  config.data.image_size = 8
  config.data.threads = 2
  config.model.width = 8
  config.train.batch_size = 16
  config.train.eval_batch_size = 32
  config.train.steps = steps
  config.train.eval_every = 3
  config.train.log_every = 1
  config.train.keep_checkpoints = 10
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split("__")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def checkpoint_steps(workdir: str, which: str = "latest") -> list[int]:
  """Steps saved under workdir/checkpoints/<which>."""
  root = os.path.join(workdir, "checkpoints", which)
  return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def load_params(workdir: str, step: int | None = None, which: str = "latest") -> dict:
  """The saved train state of `step` (default: the newest) as a pytree of numpy arrays."""
  step = checkpoint_steps(workdir, which)[-1] if step is None else step
  path = os.path.join(os.path.abspath(workdir), "checkpoints", which, str(step), "state")
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(path)
  return {"params": state["params"], "model_state": state["model_state"],
          "opt_state": state["opt_state"], "step": np.asarray(state["step"])}
