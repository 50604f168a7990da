"""Denoiser train-step benchmark: images/s of the project's own diffusion train step, and its
FLOP/s against a float32 matmul measured in the same run.

Run from the repository root: `python bench/diffusion_train_step.py [--batch 64 --dtype ...]`.
Progress goes to stderr; the last line of stdout is one JSON object (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from bench import machine  # noqa: E402
from bench.sampler import device_info as sampler_device_info  # noqa: E402
from bench.sampler import add_denoiser_args, model_config  # noqa: E402
from bench.train_step import MatmulProbe, compile_and_time, log, ratio  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  """The benchmark's command line (the model options are bench/sampler.py's)."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_denoiser_args(p)
  p.add_argument("--batch", type=int, default=64, help="images per train step")
  p.add_argument("--timesteps", type=int, default=1000, help="the linear schedule's T")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "auto"),
                 help="model.dtype, the denoiser compute dtype (params stay float32)")
  p.add_argument("--conv-impl", default="auto", choices=("auto", "xla", "im2col"))
  p.add_argument("--learning-rate", type=float, default=1e-4, help="Adam's constant rate")
  p.add_argument("--reps", type=int, default=5, help="timed train steps (median)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  p.add_argument("--matmul-size", type=int, default=0, help="0 = 2048 on CPU, 8192 on accelerators")
  p.add_argument("--matmul-reps", type=int, default=3,
                 help="float32 matmul reps before the train steps (one more follows each timed step)")
  p.add_argument("--profile", default="",
                 help="a directory: trace two extra steps into it with jax.profiler.trace")
  p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def build_config(args):
  """configs/diffusion.py's defaults with the benchmark's model, data shape, batch and Adam."""
  from configs import diffusion as diffusion_config
  config = diffusion_config.get_config("unet")
  config.model = model_config(args)
  config.data.image_size = args.image_size
  config.data.channels = args.image_channels
  config.diffusion.schedule = "linear"
  config.diffusion.num_timesteps = args.timesteps
  config.train.batch_size = args.batch
  config.train.optimizer = "adam"
  config.train.learning_rate = args.learning_rate
  config.train.schedule = "constant"
  config.train.warmup_epochs = 0.0
  config.train.steps = args.warmup + args.reps + (2 if args.profile else 0) + 1
  config.seed = args.seed
  return config


def dtype_name(dtype) -> str:
  """The name of the model's resolved compute dtype (as given if it is not a dtype)."""
  import jax.numpy as jnp
  try:
    return jnp.dtype(dtype).name
  except TypeError:
    return str(dtype)


def bench_step(config, args, mesh, probe: MatmulProbe) -> dict:
  """Compiles the task's train step, then times warm steps on one fixed, sharded batch.

  A matmul rep follows each timed step, so that both see the same load on a shared machine.
  """
  import jax
  import numpy as np
  from jaxsynth.diffusion.schedules import make_schedule
  from jaxsynth.models import denoisers
  from jaxsynth.synthesis.generator import extra_inputs
  from jaxsynth.tasks import diffusion as task
  from jaxsynth.training import parallel, train_state
  from jaxsynth.training.optim import learning_rate_schedule, make_optimizer

  shape = (args.image_size, args.image_size, args.image_channels)
  denoisers.check_image_shape(config.model, shape)
  model = denoisers.make_denoiser(config.model, args.classes)
  schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
  lr_schedule = learning_rate_schedule(config.train, 1, config.train.steps)
  tx = make_optimizer(config.train, lr_schedule)
  options = task.loss_options(config, args.classes)
  state = train_state.init_state(model, tx, shape, config.seed, mesh, extra_inputs())
  params = denoisers.count_params(state.params)
  step = task.make_train_step(model, tx, schedule, options, lr_schedule, config.train.ema_decay,
                              mesh)

  rng = np.random.default_rng(args.seed)
  host_batch = {"image": rng.uniform(-1.0, 1.0, (args.batch, *shape)).astype(np.float32),
                "label": (np.arange(args.batch) % args.classes).astype(np.int32)}
  batch = parallel.to_global(host_batch, parallel.batch_sharding(mesh))

  log(f"compiling the {config.model.name} diffusion train step ({params:,} params, batch "
      f"{args.batch}) ...")
  run = compile_and_time(step, state, batch, args.warmup, args.reps, probe)
  compiled, state, metrics = run["compiled"], run["state"], run["metrics"]
  compile_s, warmup_s, per_device_flops = run["compile_s"], run["warmup_s"], run["per_device_flops"]
  times, cpu_times = run["times"], run["cpu_times"]
  if args.profile:
    log(f"tracing two steps into {args.profile} ...")
    with jax.profiler.trace(args.profile):
      for _ in range(2):
        state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
  if args.reps or args.warmup or args.profile:
    if not bool(jax.device_get(metrics["finite"])):
      raise FloatingPointError("the benchmark's train step gave a non-finite loss or gradient")
    loss = float(jax.device_get(metrics["loss"]))
  else:
    loss = None
  step_s = statistics.median(times) if times else None
  cpu_s = statistics.median(cpu_times) if cpu_times else None
  out = {"params": params, "precision": dtype_name(model.dtype),
         "loss_options": options, "schedule": {"name": config.diffusion.schedule,
                                               "num_timesteps": config.diffusion.num_timesteps},
         "compile_s": compile_s, "warmup_s": warmup_s, "last_loss": loss,
         "seconds": times, "seconds_median": step_s,
         "seconds_min": min(times) if times else None,
         "cpu_seconds": cpu_times, "cpu_seconds_median": cpu_s,
         "cpu_cores": ratio(sum(cpu_times), sum(times)),
         "images_per_s": ratio(args.batch, step_s),
         "images_per_cpu_s": ratio(args.batch, cpu_s),
         "per_device_step_flops": per_device_flops,
         "step_flops": None if per_device_flops is None else per_device_flops * mesh.devices.size}
  out["achieved_flops_per_s"] = ratio(out["step_flops"], step_s)
  out["achieved_flops_per_cpu_s"] = ratio(per_device_flops, cpu_s)
  return out


def run(args) -> dict:
  """Runs every measurement and returns the result object."""
  os.environ["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), args.xla_flags)
                                     if f).strip()
  import jaxsynth  # noqa: F401  (adds its XLA:CPU settings before jax's backend starts)
  import flax
  import jax
  import jax.numpy as jnp
  import jaxlib
  from jaxsynth.training import parallel

  on_cpu = jax.devices()[0].platform == "cpu"
  args.matmul_size = args.matmul_size or (2048 if on_cpu else 8192)
  config = build_config(args)
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_divisible(args.batch, mesh, "--batch")
  device = sampler_device_info()
  device["mesh_data"] = int(mesh.devices.size)
  t = config.train
  result = {"benchmark": "diffusion_train_step", "framework": "jaxsynth",
            "batch": args.batch, "config": vars(args).copy(),
            "model_config": config.model.to_dict(),
            "train_config": {"optimizer": t.optimizer, "learning_rate": t.learning_rate,
                             "schedule": t.schedule, "warmup_epochs": t.warmup_epochs,
                             "weight_decay": t.weight_decay, "grad_clip": t.grad_clip,
                             "ema_decay": t.ema_decay,
                             "source": "configs/diffusion.py get_config() with optimizer=adam, "
                                       "the --learning-rate, constant schedule, no warmup"},
            "device": device, "cpu": machine.cpu_info(),
            "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                         "flax": flax.__version__, "python": platform.python_version()}}
  log(f"matmul {args.matmul_size}^2 float32 ...")
  probe = MatmulProbe(args.matmul_size, jnp.float32)
  for _ in range(args.matmul_reps):
    probe.rep()
  result.update(bench_step(config, args, mesh, probe))
  result.update(probe.summary())
  result["fraction_of_matmul"] = ratio(result["achieved_flops_per_s"],
                                       result["matmul_flops_per_s"] * mesh.devices.size)
  if device["platform"] == "cpu" and mesh.devices.size == 1:
    result["fraction_of_matmul_cpu_time"] = ratio(result["achieved_flops_per_cpu_s"],
                                                  result["matmul_flops_per_cpu_s"])
  else:
    result["fraction_of_matmul_cpu_time"] = None
  return result


def main(argv=None) -> None:
  """Prints progress to stderr and the result as one JSON line on stdout."""
  args = parse_args(argv)
  with contextlib.redirect_stdout(sys.stderr):
    result = run(args)
  print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  main()
