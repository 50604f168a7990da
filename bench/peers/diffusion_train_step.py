"""diffusers peer of bench/diffusion_train_step.py: UNet2DModel (issue-#4 reference) DDPM train step.

Run from the repository root: `python bench/peers/diffusion_train_step.py [--batch 64 ...]`.
Progress goes to stderr; the last line of stdout is one JSON object (see bench/README.md).
One step: fresh noise, timesteps t ~ U{0..T-1} (a torch.Generator seeded by --seed) on a fixed
random x0 batch with random class labels; x_t = DDPMScheduler.add_noise (linear betas 1e-4..0.02
over T); eps-prediction MSE; backward; Adam step; zero_grad(set_to_none=True).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (add_common_args, autocast, common_fields, count_params, log, main,  # noqa: E402
                    memory_format, setup_torch, time_train_steps, unet, UNET_CONFIG)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  """The benchmark's command line."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_common_args(p, batch=64, reps=5, warmup=2, reps_aliases=("--steps",))
  p.add_argument("--image-size", type=int, default=32, help="UNet sample_size")
  p.add_argument("--classes", type=int, default=2, help="class labels are randint(0, classes)")
  p.add_argument("--num-class-embeds", type=int, default=0,
                 help="rows of the UNet's class embedding; 0 = --classes (the reference's 2: "
                      "6,406,403 params; classes + 1 adds a null label row: 6,406,659)")
  p.add_argument("--timesteps", type=int, default=1000, help="the schedule's T")
  p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=1e-4, help="Adam learning rate")
  return p.parse_args(argv)


def run(args) -> dict:
  """Builds the UNet, scheduler and optimiser, runs the warm-up steps, then times --reps steps."""
  from diffusers import DDPMScheduler
  setup_torch(args)
  args.num_class_embeds = args.num_class_embeds or args.classes
  fmt = memory_format(args)
  model = unet(args, args.num_class_embeds)
  model.train()
  params = count_params(model)
  optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
  scheduler = DDPMScheduler(num_train_timesteps=args.timesteps, beta_schedule="linear",
                            beta_start=1e-4, beta_end=0.02)
  generator = torch.Generator().manual_seed(args.seed)
  shape = (args.batch, 3, args.image_size, args.image_size)
  x0 = torch.randn(shape, generator=generator).contiguous(memory_format=fmt)
  labels = torch.randint(0, args.classes, (args.batch,), generator=generator)
  last = {}

  def step():
    noise = torch.randn(shape, generator=generator).contiguous(memory_format=fmt)
    t = torch.randint(0, args.timesteps, (args.batch,), generator=generator)
    x_t = scheduler.add_noise(x0, noise, t)
    with autocast(args):
      eps = model(x_t, t, class_labels=labels).sample
    loss = F.mse_loss(eps.float(), noise)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    last["loss"] = loss.detach()

  log(f"UNet2DModel ({params:,} params), {args.image_size}px, batch {args.batch}, {args.dtype}, "
      f"{torch.get_num_threads()} threads; {args.warmup} warm-up steps ...")
  timer, warmup_s, loss = time_train_steps(step, args, last)
  result = common_fields("diffusion_train_step", "diffusers", args, params, timer, warmup_s)
  result.update({
      "model": "unet (diffusers UNet2DModel, issue-#4 reference)",
      "model_config": dict(UNET_CONFIG, sample_size=args.image_size,
                           num_class_embeds=args.num_class_embeds),
      "noise_schedule": {"class": "diffusers.DDPMScheduler", "beta_schedule": "linear",
                         "beta_start": 1e-4, "beta_end": 0.02,
                         "num_train_timesteps": args.timesteps},
      "objective": "eps-prediction MSE", "optimizer": "Adam", "last_loss": loss})
  return result


if __name__ == "__main__":
  main(run, parse_args)
