"""Tiny configs and checkpoint readers for training tests."""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from configs import default, diffusion
from jaxsynth import config as config_lib


def tiny_config(steps: int = 6, **overrides):
  """The default job shrunk to seconds: 8 px digits, width-8 ResNet-18, batch 16."""
  config = default.get_config("classifier")
  config.data.image_size = 8
  config.data.threads = 2
  config.model.width = 8
  config.train.batch_size = 16
  config.train.eval_batch_size = 32
  config.train.steps = steps
  config.train.eval_every = 3
  config.train.log_every = 1
  config.train.keep_checkpoints = 10
  return override(config, **overrides)


def override(config, **overrides):
  """Sets `a__b=value` keys (double underscore for a dot) of `config`; returns it."""
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split("__")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def tiny_diffusion_config(name: str = "unet", steps: int = 6, **overrides):
  """A diffusion run shrunk to seconds: 8 px digits, a tiny UNet or DiT, T = 100, batch 16."""
  config = diffusion.get_config(name)
  config.data.image_size = 8
  config.data.threads = 2
  config.model.unet.update(channels=(16, 32), res_blocks=1, attn_resolutions=(), head_dim=8,
                           norm_groups=8, mid_attention=False, dropout=0.1)
  config.model.dit.update(hidden_size=32, depth=2, num_heads=2, dropout=0.1)
  config.diffusion.num_timesteps = 100
  config.diffusion.sample_steps = 5
  config.diffusion.grid_per_class = 2
  config.diffusion.val_batches = 1
  config.train.update(batch_size=16, eval_batch_size=32, steps=steps, log_every=1, eval_every=3,
                      checkpoint_every=2, sample_every=3, keep_checkpoints=10,
                      learning_rate=1e-3)
  config.sample.update(num_steps=5, shard_size=6, batch_size=4)
  return override(config, **overrides)


def checkpoint_steps(workdir: str, which: str = "latest") -> list[int]:
  """Steps saved under workdir/checkpoints/<which>."""
  return config_lib.checkpoint_steps(workdir, which)


def load_params(workdir: str, step: int | None = None, which: str = "latest") -> dict:
  """The saved train state of `step` (default: the newest) as a pytree of numpy arrays."""
  step = checkpoint_steps(workdir, which)[-1] if step is None else step
  path = os.path.join(os.path.abspath(workdir), "checkpoints", which, str(step), "state")
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(path)
  return {"params": state["params"], "model_state": state["model_state"],
          "opt_state": state["opt_state"], "step": np.asarray(state["step"])}


def assert_trees_equal(a, b):
  """Asserts two pytrees have the same structure and bit-identical leaves."""
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
