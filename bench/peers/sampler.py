"""diffusers peer of bench/sampler.py: DDIM sampling images/s with the issue-#4 reference UNet2DModel.

Run from the repository root: `python bench/peers/sampler.py [--batch 16 --steps 50 --cfg 3 ...]`.
Progress goes to stderr; the last line of stdout is one JSON object (see bench/README.md).
The loop is written by hand, as a diffusers user does: scheduler.set_timesteps, then for each t
model(...).sample and scheduler.step, under torch.inference_mode() with the UNet in eval mode.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (add_common_args, autocast, common_fields, count_params, log, main,  # noqa: E402
                    memory_format, setup_torch, Timer, unet, UNET_CONFIG)

import torch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  """The benchmark's command line."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_common_args(p, batch=16, reps=3, warmup=1)
  p.add_argument("--steps", type=int, default=50, help="DDIM steps (network evaluations)")
  p.add_argument("--cfg", type=float, default=None,
                 help="classifier-free guidance w (one batched 2B forward per step); omit for none")
  p.add_argument("--eta", type=float, default=0.0)
  p.add_argument("--spacing", default="trailing", choices=("trailing", "leading", "linspace"),
                 help="DDIMScheduler timestep_spacing; trailing = jaxsynth's uniform spacing "
                      "(999, 979, ..., 19 for 50 steps)")
  p.add_argument("--timesteps", type=int, default=1000, help="the schedule's T")
  p.add_argument("--image-size", type=int, default=32, help="UNet sample_size")
  p.add_argument("--classes", type=int, default=2, help="class labels are arange(batch) % classes")
  p.add_argument("--forward-reps", type=int, default=3,
                 help="timed forwards alone at the effective batch, after the sampler reps")
  return p.parse_args(argv)


def run(args) -> dict:
  """Builds the UNet and scheduler, runs --warmup untimed and --reps timed sampler calls, then
  --forward-reps forwards alone."""
  from diffusers import DDIMScheduler
  setup_torch(args)
  cfg = args.cfg is not None
  num_class_embeds = args.classes + 1 if cfg else args.classes    # + the null label with CFG
  null_label = args.classes
  fmt = memory_format(args)
  model = unet(args, num_class_embeds).eval()
  params = count_params(model)
  scheduler_config = dict(num_train_timesteps=args.timesteps, beta_schedule="linear",
                          beta_start=1e-4, beta_end=0.02, clip_sample=False,
                          set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon",
                          timestep_spacing=args.spacing)
  scheduler = DDIMScheduler(**scheduler_config)
  generator = torch.Generator().manual_seed(args.seed)
  shape = (args.batch, 3, args.image_size, args.image_size)
  labels = torch.arange(args.batch) % args.classes
  if cfg:
    labels = torch.cat([labels, torch.full((args.batch,), null_label, dtype=labels.dtype)])
  effective = labels.shape[0]

  def sample():
    x = torch.randn(shape, generator=generator).contiguous(memory_format=fmt)
    scheduler.set_timesteps(args.steps)
    with torch.inference_mode():
      for t in scheduler.timesteps:
        model_in = torch.cat([x, x]) if cfg else x
        with autocast(args):
          eps = model(model_in, t, class_labels=labels).sample
        eps = eps.float()
        if cfg:
          cond, uncond = eps.chunk(2)
          eps = uncond + args.cfg * (cond - uncond)
        x = scheduler.step(eps, t, x, eta=args.eta, generator=generator).prev_sample
    return x

  log(f"UNet2DModel ({params:,} params, {num_class_embeds} class rows), DDIM {args.steps} steps, "
      f"batch {args.batch} (effective {effective}), {args.dtype}, {torch.get_num_threads()} "
      f"threads; {args.warmup} warm-up calls ...")
  timer = Timer(sample)
  warmup_s = timer.untimed(args.warmup)
  log(f"timing {args.reps} sampler calls ...")
  images = None
  for r in range(args.reps):
    images = timer.rep()
    log(f"  call {r + 1}/{args.reps}: {timer.times[-1]:.2f}s")
  if not torch.isfinite(images).all():
    raise FloatingPointError("the sampler produced non-finite images")

  # One forward alone at the effective batch (2B with CFG), as bench/sampler.py times it.
  x = torch.randn((effective,) + shape[1:], generator=generator).contiguous(memory_format=fmt)
  t = torch.full((effective,), args.timesteps // 2, dtype=torch.long)

  def forward():
    with torch.inference_mode(), autocast(args):
      return model(x, t, class_labels=labels).sample

  forward_timer = Timer(forward)
  forward_timer.untimed(1)
  for _ in range(args.forward_reps):
    forward_timer.rep()
  forward_s = statistics.median(forward_timer.times)
  forward_cpu_s = statistics.median(forward_timer.cpu_times)
  log(f"forward at batch {effective}: {forward_s * 1e3:.0f} ms")

  result = common_fields("sampler", "diffusers", args, params, timer, warmup_s)
  sampler_s, sampler_cpu_s = result["seconds_median"], result["cpu_seconds_median"]
  nfe = len(scheduler.timesteps)
  result.update({
      "model": "unet (diffusers UNet2DModel, issue-#4 reference)",
      "model_config": dict(UNET_CONFIG, sample_size=args.image_size,
                           num_class_embeds=num_class_embeds),
      "sampler": "ddim", "steps": args.steps, "nfe": nfe, "effective_batch": effective,
      "cfg": args.cfg, "null_label": null_label if cfg else None,
      "scheduler": dict(scheduler_config, **{"class": "diffusers.DDIMScheduler", "eta": args.eta,
                                             "timesteps": [int(v) for v in scheduler.timesteps]}),
      "sampler_s_median": sampler_s,
      "forward_s": list(forward_timer.times), "forward_s_median": forward_s,
      "forward_ms": forward_s * 1e3, "forward_cpu_s_median": forward_cpu_s,
      "overhead_ratio": sampler_s / (nfe * forward_s),
      "overhead_ratio_cpu": sampler_cpu_s / (nfe * forward_cpu_s) if forward_cpu_s > 0 else None,
  })
  return result


if __name__ == "__main__":
  main(run, parse_args)
