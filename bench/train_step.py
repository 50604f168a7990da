"""Classifier training benchmark: step images/s, FLOP/s against a matmul, input pipeline headroom.

Run from the repository root: `python bench/train_step.py [--model resnet18 --batch 128 ...]`.
Progress goes to stderr; the last line of stdout is one JSON object (see bench/README.md).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from bench import machine  # noqa: E402

AIMS = {"pipeline_over_step": 3.0, "fraction_of_matmul": 0.5}


def parse_args(argv=None) -> argparse.Namespace:
  """The benchmark's command line."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="resnet18",
                 help="config.model.name for jaxsynth.models.registry.make_classifier")
  p.add_argument("--image-size", type=int, default=28)
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--num-classes", type=int, default=10)
  p.add_argument("--batch", type=int, default=128, help="global batch (images per step)")
  p.add_argument("--steps", type=int, default=0,
                 help="timed train steps; 0 = 5 on CPU, 50 on an accelerator")
  p.add_argument("--warmup", type=int, default=1, help="untimed train steps after compiling")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="model compute dtype (params stay float32); also the matmul's dtype")
  p.add_argument("--pipeline-batches", type=int, default=40,
                 help="timed batches of the input pipeline alone")
  p.add_argument("--pipeline-samples", type=int, default=4096,
                 help="random uint8 images in the in-memory source")
  p.add_argument("--threads", type=int, default=0,
                 help="grain reader threads (config.data.threads); 0 keeps the config's value")
  p.add_argument("--end-to-end-steps", type=int, default=0,
                 help="also time this many train steps fed by the pipeline (0 skips it)")
  p.add_argument("--matmul-size", type=int, default=0,
                 help="side of the square matmul; 0 = 2048 on CPU, 8192 on an accelerator")
  p.add_argument("--matmul-reps", type=int, default=5,
                 help="matmul reps before the train steps (one more follows each timed step)")
  p.add_argument("--devices", type=int, default=0,
                 help="simulate this many CPU devices (sets XLA_FLAGS before jax starts)")
  p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS, e.g. for CPU thread tests")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a classifier config key, e.g. --set model.width=32")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def configure_xla(args) -> None:
  """Applies --devices and --xla-flags to XLA_FLAGS; must run before jax is imported."""
  flags = [os.environ.get("XLA_FLAGS", ""), args.xla_flags]
  if args.devices:
    flags.append(f"--xla_force_host_platform_device_count={args.devices}")
  os.environ["XLA_FLAGS"] = " ".join(f for f in flags if f).strip()
  import jaxsynth  # noqa: F401  (adds its XLA:CPU settings before jax's backend starts)


def log(message: str) -> None:
  """Progress to stderr, so that stdout carries only the JSON."""
  print(f"[bench] {message}", file=sys.stderr, flush=True)


def build_config(args):
  """The classifier config with the benchmark's model, data shape, batch and augmentation."""
  from configs import classifier as classifier_config
  config = classifier_config.get_config("npz")
  config.model.name = args.model
  config.model.dtype = args.dtype
  config.data.image_size = args.image_size
  config.data.channels = args.channels
  config.data.augment.random_crop = True
  config.data.augment.hflip = True
  if args.threads:
    config.data.threads = args.threads
  config.train.batch_size = args.batch
  config.train.optimizer = "adam"
  config.train.steps = args.warmup + args.steps + args.end_to_end_steps + 1
  config.seed = args.seed
  config.lock()
  for item in args.set:
    key, _, text = item.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = key.split(".")
    try:
      target = config
      for part in parents:
        target = target[part]
      target[leaf] = value
    except (KeyError, TypeError, AttributeError) as e:
      raise SystemExit(f"--set {item}: not a settable classifier config key ({e})") from None
  return config


def ratio(a, b):
  """a / b, or None when either is missing."""
  return None if a is None or b is None or b == 0 else a / b


def flops_of(compiled) -> float | None:
  """Total FLOPs from XLA's cost analysis (a dict in new JAX, a list of dicts in older ones)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  return float(analysis["flops"])


class MatmulProbe:
  """A jitted square matmul on the default device, timed one rep at a time."""

  def __init__(self, size: int, dtype, accumulate=None):
    """`accumulate` (e.g. float32 for bfloat16 operands): the dot's preferred_element_type."""
    import functools
    import jax
    import jax.numpy as jnp
    self.size, self.dtype = size, jnp.dtype(dtype)
    self.accumulate = None if accumulate is None else jnp.dtype(accumulate)
    self.a = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
    self.b = jax.random.normal(jax.random.PRNGKey(2), (size, size), dtype)
    matmul = (jnp.matmul if accumulate is None
              else functools.partial(jnp.matmul, preferred_element_type=accumulate))
    self.matmul = jax.jit(matmul).lower(self.a, self.b).compile()
    self.matmul(self.a, self.b).block_until_ready()
    self.times, self.cpu_times = [], []

  def rep(self) -> None:
    """Times one matmul (wall and process CPU time) and records it."""
    start, cpu_start = time.perf_counter(), time.process_time()
    self.matmul(self.a, self.b).block_until_ready()
    self.times.append(time.perf_counter() - start)
    self.cpu_times.append(time.process_time() - cpu_start)

  def summary(self) -> dict:
    """FLOP/s of the median rep over every rep taken so far (and per CPU second)."""
    flops = 2.0 * self.size**3
    seconds, cpu_s = statistics.median(self.times), statistics.median(self.cpu_times)
    return {"matmul_size": self.size, "matmul_dtype": self.dtype.name,
            "matmul_reps_taken": len(self.times), "matmul_s_median": seconds,
            "matmul_flops_per_s": flops / seconds,
            "matmul_flops_per_cpu_s": flops / cpu_s if cpu_s > 0 else None}


def random_source(n: int, size: int, channels: int, num_classes: int, seed: int):
  """An in-memory source of `n` random uint8 (size, size, channels) images."""
  import numpy as np
  from jaxsynth.data.base import ImageSource

  class ArraySource(ImageSource):
    """Random images held in memory (no decoding, no disk)."""

    def __init__(self, images, labels):
      super().__init__(labels, num_classes, images.shape[1:])
      self.images = images
      self.name = "<bench random uint8>"

    def load_image(self, index: int):
      return self.images[index]

  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
  return ArraySource(images, np.arange(n) % num_classes)


def compile_and_time(step, state, batch, warmup: int, reps: int, probe: MatmulProbe) -> dict:
  """Compiles `step` ahead of time, runs `warmup` untimed steps, then `reps` timed ones, a
  matmul rep after each (so both see the same load on a shared machine).

  Returns compiled, state, metrics, compile_s, warmup_s, times, cpu_times, per_device_flops.
  """
  import jax
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  metrics = None
  start = time.perf_counter()
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  warmup_s = time.perf_counter() - start
  log(f"compiled in {compile_s:.1f}s; timing {reps} steps ...")
  times, cpu_times = [], []
  for r in range(reps):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
    probe.rep()
    log(f"  step {r + 1}/{reps}: {times[-1]:.3f}s")
  return {"compiled": compiled, "state": state, "metrics": metrics, "compile_s": compile_s,
          "warmup_s": warmup_s, "times": times, "cpu_times": cpu_times,
          "per_device_flops": flops_of(compiled)}


def bench_train(config, args, mesh, source, probe: MatmulProbe) -> tuple[dict, tuple]:
  """Compiles the project's train step, then times warm steps on a fixed device batch.

  A matmul rep follows each timed step, so that both see the same load on a shared machine.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jaxsynth.models.registry import make_classifier
  from jaxsynth.recipes.losses import make_loss
  from jaxsynth.recipes import classifier as classifier_lib
  from jaxsynth.training import parallel
  from jaxsynth.training.optim import learning_rate_schedule, make_optimizer

  shape = (args.image_size, args.image_size, args.channels)
  model = make_classifier(config.model, args.num_classes)
  schedule = learning_rate_schedule(config.train, 1, config.train.steps)
  tx = make_optimizer(config.train, schedule)
  loss_fn = make_loss(config, source.class_counts(), args.num_classes)
  state = classifier_lib.init_state(model, tx, shape, config.seed, mesh)
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  step = classifier_lib.make_train_step(model, tx, loss_fn, schedule, config.train.ema_decay, mesh)

  rng = np.random.default_rng(args.seed)
  host_batch = {"image": rng.standard_normal((args.batch, *shape), dtype=np.float32),
                "label": (np.arange(args.batch) % args.num_classes).astype(np.int32)}
  batch = parallel.to_global(host_batch, parallel.batch_sharding(mesh))

  log(f"compiling the {config.model.name} train step ({params:,} params) ...")
  run = compile_and_time(step, state, batch, args.warmup, args.steps, probe)
  compiled, state, metrics = run["compiled"], run["state"], run["metrics"]
  compile_s, warmup_s, per_device_flops = run["compile_s"], run["warmup_s"], run["per_device_flops"]
  times, cpu_times = run["times"], run["cpu_times"]
  if not bool(jax.device_get(metrics["finite"])):
    raise FloatingPointError("the benchmark's train step gave a non-finite loss or gradient")
  step_s = statistics.median(times)
  out = {"params": params, "compile_s": compile_s, "warmup_s": warmup_s,
         "precision": jnp.dtype(getattr(model, "dtype", config.model.dtype)).name,
         "seconds": times, "seconds_median": step_s,
         "step_s_median": step_s, "step_s_min": min(times), "step_s_total": sum(times),
         "step_cpu_s_median": statistics.median(cpu_times),
         "step_cpu_cores": sum(cpu_times) / sum(times),
         "train_images_per_s": args.batch / step_s, "images_per_s": args.batch / step_s,
         "per_device_step_flops": per_device_flops,
         "step_flops": None if per_device_flops is None else per_device_flops * mesh.devices.size}
  out["achieved_flops_per_s"] = ratio(out["step_flops"], step_s)
  out["achieved_flops_per_cpu_s"] = ratio(per_device_flops, out["step_cpu_s_median"])
  return out, (compiled, state)


def bench_pipeline(config, args, source) -> dict:
  """Images/s of `pipeline.train_dataset` alone (first batch excluded: thread start-up)."""
  from jaxsynth.data import pipeline
  dataset = pipeline.train_dataset(source, config.data, global_batch=args.batch, seed=args.seed,
                                   start_step=0, num_steps=args.pipeline_batches + 1)
  iterator = iter(dataset)
  first = next(iterator)
  start, cpu_start = time.perf_counter(), time.process_time()
  batches = 0
  for _ in iterator:
    batches += 1
  seconds = time.perf_counter() - start
  cpu_s = time.process_time() - cpu_start
  aug = config.data.augment
  return {"pipeline_images_per_s": batches * args.batch / seconds,
          "pipeline_cpu_cores": cpu_s / seconds,
          "pipeline_batches": batches, "pipeline_threads": config.data.threads,
          "pipeline_prefetch": config.data.prefetch,
          "pipeline_batch_shape": list(first["image"].shape),
          "pipeline_augment": {k: aug[k] for k in ("random_crop", "crop_padding", "hflip", "vflip",
                                                   "rotation", "color_jitter")}}


def bench_end_to_end(config, args, mesh, source, compiled, state) -> dict:
  """Images/s of the compiled step fed by the pipeline, both sharing the same CPU cores."""
  import jax
  from jaxsynth.data import pipeline
  from jaxsynth.training import parallel
  steps = args.end_to_end_steps
  dataset = pipeline.train_dataset(source, config.data, global_batch=args.batch, seed=args.seed,
                                   start_step=0, num_steps=steps + 1)
  sharding = parallel.batch_sharding(mesh)
  iterator = iter(dataset)
  state, _ = compiled(state, parallel.to_global(next(iterator), sharding))
  jax.block_until_ready(state)
  start = time.perf_counter()
  for batch in iterator:
    state, metrics = compiled(state, parallel.to_global(batch, sharding))
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - start
  return {"end_to_end_steps": steps, "end_to_end_images_per_s": steps * args.batch / seconds}


def device_info(mesh) -> dict:
  """The accelerator (or CPU) the benchmark ran on."""
  import jax
  first = jax.devices()[0]
  return {"kind": first.device_kind, "platform": first.platform, "count": jax.device_count(),
          "mesh_data": int(mesh.devices.size), "processes": jax.process_count(),
          "host_cpus": os.cpu_count(), "host": platform.machine(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def run(args) -> dict:
  """Runs every measurement and returns the result object."""
  configure_xla(args)
  import flax
  import jax
  import jax.numpy as jnp
  from jaxsynth.training import parallel

  on_cpu = jax.devices()[0].platform == "cpu"
  args.steps = args.steps or (5 if on_cpu else 50)
  args.matmul_size = args.matmul_size or (2048 if on_cpu else 8192)
  config = build_config(args)
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_divisible(args.batch, mesh, "--batch")
  source = random_source(args.pipeline_samples, args.image_size, args.channels, args.num_classes,
                         args.seed)
  result = {"benchmark": "train_step", "framework": "jaxsynth", "cpu": machine.cpu_info(),
            "config": vars(args).copy(),
            "model_config": config.model.to_dict(), "device": device_info(mesh),
            "versions": {"jax": jax.__version__, "flax": flax.__version__,
                         "python": platform.python_version()}}
  log("matmul ...")
  probe = MatmulProbe(args.matmul_size, jnp.dtype(args.dtype))
  for _ in range(args.matmul_reps):
    probe.rep()
  train, (compiled, state) = bench_train(config, args, mesh, source, probe)
  result.update(train)
  result.update(probe.summary())
  log("input pipeline ...")
  result.update(bench_pipeline(config, args, source))
  if args.end_to_end_steps > 0:
    log("pipeline-fed train steps ...")
    result.update(bench_end_to_end(config, args, mesh, source, compiled, state))
    result["end_to_end_over_step"] = ratio(result["end_to_end_images_per_s"],
                                           result["train_images_per_s"])
  result["pipeline_over_step"] = ratio(result["pipeline_images_per_s"],
                                       result["train_images_per_s"])
  result["fraction_of_matmul"] = ratio(result["achieved_flops_per_s"],
                                       result["matmul_flops_per_s"] * mesh.devices.size)
  if result["device"]["platform"] == "cpu" and mesh.devices.size == 1:
    result["fraction_of_matmul_cpu_time"] = ratio(result["achieved_flops_per_cpu_s"],
                                                  result["matmul_flops_per_cpu_s"])
  else:
    result["fraction_of_matmul_cpu_time"] = None
  result["aims"] = AIMS
  result["meets_aims"] = {k: result[k] is not None and result[k] >= v for k, v in AIMS.items()}
  return result


def main(argv=None) -> None:
  """Prints progress to stderr and the result as one JSON line on stdout."""
  args = parse_args(argv)
  with contextlib.redirect_stdout(sys.stderr):
    result = run(args)
  print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  main()
