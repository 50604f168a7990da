"""Diffusion sample quality: a tiny UNet and a tiny DiT trained with `train_diffusion` on
scikit-learn digits 0 vs 1 (8x8, as a MedMNIST-style npz), sampled with the `sample` task (DDIM
25 steps, CFG w = 2), and scored by a logistic regression fit on the real train images: the
fraction of samples it assigns to the asked class (chance = 0.5). The setup is the one of
tests/test_diffusion_quality.py.

  python bench/diffusion_quality.py                          # both models, seed 0
  python bench/diffusion_quality.py --models dit --seeds 0,1,2 --dit-steps 400

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from tests import test_diffusion_quality as quality  # noqa: E402


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="unet,dit", help="comma-separated: unet, dit")
  parser.add_argument("--seeds", default="0", help="comma-separated run seeds")
  parser.add_argument("--unet-steps", type=int, default=quality.STEPS["unet"])
  parser.add_argument("--dit-steps", type=int, default=quality.STEPS["dit"])
  parser.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance w")
  parser.add_argument("--sample-steps", type=int, default=25, help="DDIM steps")
  parser.add_argument("--xla-cache", default="",
                      help="persistent XLA compilation cache dir ('' = none: cold compiles)")
  args = parser.parse_args(argv)
  if args.xla_cache:
    jax.config.update("jax_compilation_cache_dir", args.xla_cache)
  steps = {"unet": args.unet_steps, "dit": args.dit_steps}
  runs = []
  for name in [m for m in args.models.split(",") if m]:
    for seed in [int(s) for s in args.seeds.split(",") if s]:
      with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        result = quality.train_and_sample(
            name, root, steps[name], seed=seed,
            sample_overrides={"cfg_scale": args.cfg, "num_steps": args.sample_steps})
        result.update(seed=seed, total_s=time.perf_counter() - t0)
      print(json.dumps(result), file=sys.stderr, flush=True)
      runs.append(result)
  summary = {}
  for name in {r["model"] for r in runs}:
    acc = [r["accuracy"] for r in runs if r["model"] == name]
    summary[name] = {"accuracy_mean": sum(acc) / len(acc), "accuracy_min": min(acc),
                     "steps": steps[name]}
  out = {"config": vars(args), "chance": quality.CHANCE, "bar": quality.MIN_ACCURACY,
         "per_class": quality.PER_CLASS, "summary": summary, "runs": runs,
         "device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({platform.node()}, "
                   f"{os.cpu_count()} cpus)"}
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
