"""Optax optimisers and learning-rate schedules built from `config.train`."""

from __future__ import annotations

import optax

from jaxsynth.errors import ConfigError


def learning_rate_schedule(train_cfg, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """Linear warmup, then constant, cosine to zero, or step decay at `decay_epochs`."""
  base = float(train_cfg.learning_rate)
  warmup = int(round(train_cfg.warmup_epochs * steps_per_epoch))
  if warmup >= total_steps and warmup > 0:
    raise ConfigError(f"config key 'train.warmup_epochs' = {train_cfg.warmup_epochs} covers all "
                      f"{total_steps} steps; make it shorter than training")
  rest = max(total_steps - warmup, 1)
  if train_cfg.schedule == "constant":
    main = optax.constant_schedule(base)
  elif train_cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(base, decay_steps=rest)
  else:
    boundaries = {int(round(e * steps_per_epoch)) - warmup: train_cfg.decay_factor
                  for e in train_cfg.decay_epochs}
    if not boundaries:
      raise ConfigError("config key 'train.decay_epochs' is empty but train.schedule=step; "
                        "give the epochs, e.g. --config.train.decay_epochs='(50, 75)'")
    main = optax.piecewise_constant_schedule(base, boundaries)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


def make_optimizer(train_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum, Adam or AdamW, with optional global-norm clipping and weight decay.

  Adam's (b1, b2) are `train.adam_betas` where a config has that key (the autoencoders': VQGAN's
  (0.5, 0.9)), else optax's (0.9, 0.999)."""
  name, wd = train_cfg.optimizer, float(train_cfg.weight_decay)
  b1, b2 = (float(b) for b in train_cfg.get("adam_betas", (0.9, 0.999)))
  if name == "sgd":
    core = optax.sgd(schedule, momentum=train_cfg.momentum or None, nesterov=train_cfg.nesterov)
  elif name == "adam":
    core = optax.adam(schedule, b1=b1, b2=b2)
  elif name == "adamw":
    core = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=wd)
  else:
    raise ConfigError(f"config key 'train.optimizer' has unknown value {name!r}; "
                      "use sgd, adam or adamw")
  chain = []
  if train_cfg.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(train_cfg.grad_clip))
  if wd > 0 and name != "adamw":
    chain.append(optax.add_decayed_weights(wd))
  return optax.chain(*chain, core)
