"""What the PyTorch/diffusers peer benchmarks share: the common CLI options, timing of one rep
(wall and process CPU seconds), precision handling and the common JSON fields, which have the
same names as the jaxsynth benchmarks' (see bench/README.md, "Peer benchmarks")."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from bench.machine import cpu_info  # noqa: E402  (imports neither jax nor torch)


def log(message: str) -> None:
  """Progress to stderr, so that stdout carries only the JSON."""
  print(f"[peer] {message}", file=sys.stderr, flush=True)


def add_common_args(p: argparse.ArgumentParser, *, batch: int, reps: int, warmup: int,
                    reps_aliases: tuple[str, ...] = ()) -> None:
  """The options every peer script takes; `reps_aliases` are other names of --reps (the train
  steps take --steps too, the name bench/train_step.py gives its timed steps)."""
  p.add_argument("--batch", type=int, default=batch, help="images per step / sampler call")
  p.add_argument("--threads", type=int, default=0,
                 help="torch intra-op threads (torch.set_num_threads); 0 = os.cpu_count()")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="bfloat16 = torch.autocast('cpu', dtype=torch.bfloat16); params stay float32")
  p.add_argument("--reps", *reps_aliases, dest="reps", type=int, default=reps,
                 help="timed reps (each timed alone)")
  p.add_argument("--warmup", type=int, default=warmup, help="untimed reps before the timed ones")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--channels-last", action="store_true",
                 help="torch.channels_last memory format for the model and its inputs")


def setup_torch(args):
  """Seeds torch, sets the thread count (resolving 0 in args) and returns torch."""
  import torch
  args.threads = args.threads or os.cpu_count() or 1
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  return torch


def autocast(args):
  """The forward's precision context: bf16 autocast on CPU, or nothing for float32."""
  import torch
  if args.dtype == "bfloat16":
    return torch.autocast("cpu", dtype=torch.bfloat16)
  return contextlib.nullcontext()


def memory_format(args):
  """torch.channels_last with --channels-last, else torch.contiguous_format."""
  import torch
  return torch.channels_last if args.channels_last else torch.contiguous_format


def count_params(model) -> int:
  """Trainable parameters."""
  return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


class Timer:
  """Wall and process-CPU seconds of reps of one callable, each rep timed alone."""

  def __init__(self, fn):
    self.fn, self.times, self.cpu_times = fn, [], []

  def rep(self):
    """Times one call and returns its result."""
    start, cpu_start = time.perf_counter(), time.process_time()
    out = self.fn()
    self.times.append(time.perf_counter() - start)
    self.cpu_times.append(time.process_time() - cpu_start)
    return out

  def untimed(self, n: int) -> float:
    """Runs `n` untimed calls (warm-up); returns their total wall seconds."""
    start = time.perf_counter()
    for _ in range(n):
      self.fn()
    return time.perf_counter() - start


def time_train_steps(step, args, last: dict) -> tuple[Timer, float, float]:
  """Runs `args.warmup` untimed then `args.reps` timed calls of `step` (which stores its loss
  tensor in `last["loss"]`); returns (timer, warm-up seconds, the last loss, checked finite)."""
  import math
  timer = Timer(step)
  warmup_s = timer.untimed(args.warmup)
  log(f"timing {args.reps} steps ...")
  for r in range(args.reps):
    timer.rep()
    log(f"  step {r + 1}/{args.reps}: {timer.times[-1]:.3f}s")
  loss = float(last["loss"])
  if not math.isfinite(loss):
    raise FloatingPointError("the benchmark's train step gave a non-finite loss")
  return timer, warmup_s, loss


def versions(diffusers: bool) -> dict:
  """torch (and diffusers) and python versions."""
  import torch
  out = {"torch": torch.__version__, "python": platform.python_version()}
  if diffusers:
    import diffusers as d
    out["diffusers"] = d.__version__
  return out


def common_fields(benchmark: str, framework: str, args, params: int, timer: Timer,
                  warmup_s: float | None) -> dict:
  """The fields every peer (and jaxsynth) benchmark prints."""
  import torch
  seconds = list(timer.times)
  median = statistics.median(seconds)
  cpu_median = statistics.median(timer.cpu_times)
  return {
      "benchmark": benchmark, "framework": framework, "precision": args.dtype,
      "batch": args.batch, "params": params,
      "seconds": seconds, "seconds_median": median, "seconds_min": min(seconds),
      "images_per_s": args.batch / median,
      "cpu_seconds_median": cpu_median,
      "images_per_cpu_s": args.batch / cpu_median if cpu_median > 0 else None,
      "cpu_cores_used": sum(timer.cpu_times) / sum(seconds) if sum(seconds) > 0 else None,
      "threads": torch.get_num_threads(),
      # Eager PyTorch compiles nothing; the untimed warm-up reps are in warmup_s.
      "compile_s": None, "warmup_s": warmup_s,
      "memory_format": "channels_last" if args.channels_last else "contiguous",
      "cpu": cpu_info(),
      "versions": versions(framework == "diffusers"),
      "config": vars(args).copy(),
  }


def main(run, parse_args, argv=None) -> None:
  """Runs `run(args)` with stdout sent to stderr, then prints its result as one JSON line."""
  args = parse_args(argv)
  with contextlib.redirect_stdout(sys.stderr):
    result = run(args)
  print(json.dumps(result, sort_keys=True), flush=True)


def unet(args, num_class_embeds: int):
  """The issue-#4 reference diffusers UNet2DModel (6,406,403 params with 2 class embeddings,
  6,406,659 with 3), seeded by --seed, in --channels-last format when asked."""
  import torch
  from diffusers import UNet2DModel
  torch.manual_seed(args.seed)
  model = UNet2DModel(
      sample_size=args.image_size, in_channels=3, out_channels=3,
      block_out_channels=(64, 128, 128), layers_per_block=2,
      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
      attention_head_dim=8, norm_num_groups=32, add_attention=False,
      num_class_embeds=num_class_embeds)
  return model.to(memory_format=memory_format(args))


UNET_CONFIG = {
    "class": "diffusers.UNet2DModel", "in_channels": 3, "out_channels": 3,
    "block_out_channels": [64, 128, 128], "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8, "norm_num_groups": 32, "add_attention": False,
    "time_embedding_type": "positional", "time_embed_dim": 256,
}
