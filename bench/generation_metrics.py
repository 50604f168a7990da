"""Generation-metrics benchmark: classifier feature extraction against that classifier's own
evaluation forward, and the time of each generation metric on N x N random D-d features.

Run from the repository root: `python bench/generation_metrics.py [--n 2048 --metric-n 10000 ...]`
(`--quick` for small sizes). Progress goes to stderr; the last line of stdout is one JSON object
(see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from bench.faults import machine  # noqa: E402
from bench.train_step import configure_xla, device_info, log, ratio  # noqa: E402

AIMS = {"extraction_ratio": 0.9}
# Sizes of a full run and of --quick; an explicit flag overrides either.
FULL = {"n": 2048, "reps": 3, "width": 64, "metric_n": 10000, "metric_dim": 512,
        "kid_subsets": 100, "kid_subset_size": 1000}
QUICK = {"n": 256, "reps": 2, "width": 16, "metric_n": 1000, "metric_dim": 64,
         "kid_subsets": 10, "kid_subset_size": 500}
PARTS = ("extraction", "metrics")


def parse_args(argv=None) -> argparse.Namespace:
  """The benchmark's command line."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="small sizes (QUICK) unless set below")
  p.add_argument("--parts", default="extraction,metrics",
                 help="comma-separated: extraction, metrics")
  g = p.add_argument_group("extraction")
  g.add_argument("--model", default="resnet18", help="config.model.name of the classifier run")
  g.add_argument("--width", type=int, default=None, help="config.model.width (64; quick 16)")
  g.add_argument("--image-size", type=int, default=28, help="config.data.image_size of the run")
  g.add_argument("--n", type=int, default=None, help="images per timed call (2048; quick 256)")
  g.add_argument("--batch", type=int, default=128,
                 help="global batch of the extractor and of the evaluation forward")
  g.add_argument("--reps", type=int, default=None,
                 help="timed calls of each, interleaved, after one untimed (3; quick 2)")
  g.add_argument("--train-steps", type=int, default=2, help="train steps of the classifier run")
  g.add_argument("--train-batch", type=int, default=32, help="its train.batch_size")
  g.add_argument("--workdir", default="",
                 help="classifier run directory to use (trained there if unfinished); "
                      "'' = a temporary one")
  g = p.add_argument_group("metrics")
  g.add_argument("--metric-n", type=int, default=None,
                 help="rows of the real and of the fake features (10000; quick 1000)")
  g.add_argument("--metric-dim", type=int, default=None, help="feature dimension (512; quick 64)")
  g.add_argument("--k", type=int, default=3, help="k of the k-NN metrics (all of them)")
  g.add_argument("--kid-subsets", type=int, default=None, help="KID subsets (100; quick 10)")
  g.add_argument("--kid-subset-size", type=int, default=None,
                 help="rows per KID subset (1000; quick 500)")
  p.add_argument("--devices", type=int, default=0,
                 help="simulate this many CPU devices (sets XLA_FLAGS before jax starts)")
  p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  for key, value in (QUICK if args.quick else FULL).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.parts = [part for part in args.parts.split(",") if part]
  unknown = sorted(set(args.parts) - set(PARTS))
  if unknown:
    p.error(f"--parts: unknown {unknown}; choose from {PARTS}")
  if min(args.n, args.batch, args.reps, args.metric_n, args.metric_dim) < 1:
    p.error("--n, --batch, --reps, --metric-n and --metric-dim must be >= 1")
  if args.metric_n <= args.k:
    p.error(f"--metric-n must be > --k ({args.k})")
  return args


def classifier_config(args):
  """configs/classifier.py (digits) at --image-size with the benchmark's model and a short run."""
  from configs import classifier as classifier_config_lib
  config = classifier_config_lib.get_config()
  config.data.image_size = args.image_size
  config.data.threads = 2
  config.model.name = args.model
  config.model.width = args.width
  config.train.steps = args.train_steps
  config.train.batch_size = args.train_batch
  config.train.eval_batch_size = args.batch
  config.train.log_every = 1
  config.seed = args.seed
  return config


class Timed:
  """Wall and process-CPU seconds of repeated calls of one function."""

  def __init__(self, fn):
    self.fn, self.times, self.cpu_times = fn, [], []

  def rep(self, record: bool = True):
    """Calls the function once; records its time unless `record` is False; returns its result."""
    start, cpu_start = time.perf_counter(), time.process_time()
    out = self.fn()
    if record:
      self.times.append(time.perf_counter() - start)
      self.cpu_times.append(time.process_time() - cpu_start)
    return out

  def figures(self, n: int, prefix: str) -> dict:
    """Median seconds, images/s and CPU figures under `prefix`."""
    wall, cpu = statistics.median(self.times), statistics.median(self.cpu_times)
    return {f"{prefix}_s_median": wall, f"{prefix}_s_min": min(self.times),
            f"{prefix}_images_per_s": n / wall, f"{prefix}_cpu_s_median": cpu,
            f"{prefix}_cpu_cores": sum(self.cpu_times) / sum(self.times)}


def device_batches(array, batch: int, sharding) -> list:
  """`array` cut into global batches of `batch` (the tail padded with its last row), on device."""
  import numpy as np
  from jaxsynth.training import parallel
  out = []
  for start in range(0, array.shape[0], batch):
    chunk = array[start:start + batch]
    if chunk.shape[0] < batch:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - chunk.shape[0], 0)])
    out.append(parallel.to_global(chunk, sharding))
  return out


def bench_extraction(args) -> tuple[dict, object]:
  """Trains (or reuses) the classifier run, then times its extractor against its eval forward.

  Both see the same N random uint8 images in batches of --batch: the extractor takes them on the
  host as uint8 (`Extractor.features`: prepare, pad, to_global, forward with the normalisation
  inside jit, to_host); the evaluation forward (`classifier_lib.make_predict_step`) takes them
  already normalised, as float32 batches already on the device, and fetches each batch's probs
  to the host as `predict_split` does. Reps alternate between the two (same machine load).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jaxsynth.data import augment
  from jaxsynth.metrics.features import make_extractor
  from jaxsynth.recipes.losses import probabilities
  from jaxsynth.recipes import classifier as classifier_lib
  from jaxsynth.tasks import classifier
  from jaxsynth.training import parallel, train_state

  config = classifier_config(args)
  with contextlib.ExitStack() as stack:
    workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="genbench-"))
    log(f"classifier run: {config.model.name} width {config.model.width}, "
        f"{config.data.image_size} px, {config.train.steps} steps in {workdir} ...")
    start = time.perf_counter()
    classifier.train_and_evaluate(config, workdir)
    train_s = time.perf_counter() - start
    setup = classifier_lib.build_setup(config)
    extractor = make_extractor(f"classifier:{workdir}", batch_size=args.batch)
  shape = tuple(setup.input_shape)
  mesh, batch = extractor.mesh, extractor.batch_size
  rng = np.random.default_rng(args.seed)
  images = rng.integers(0, 256, size=(args.n, *shape), dtype=np.uint8)

  # The evaluation forward on the extractor's own (restored) variables.
  variables = dict(extractor.variables)
  params = variables.pop("params")
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                 model_state=variables, opt_state=(), ema_params=params,
                                 rng=jnp.zeros((2,), jnp.uint32))
  state = jax.device_put(state, parallel.replicated(mesh))
  predict = classifier_lib.make_predict_step(setup.model, config.train.ema_decay > 0, mesh,
                                         probabilities(config))
  mean, std = augment.normalisation(config.data, shape[-1])
  normalised = ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
  sharding = parallel.batch_sharding(mesh)
  float_batches = device_batches(normalised, batch, sharding)
  uint8_batches = device_batches(images, batch, sharding)

  def eval_forward():
    return np.concatenate([parallel.to_host(predict(state, x)) for x in float_batches])[:args.n]

  def extractor_forward_only():
    return [parallel.to_host(extractor.forward(extractor.variables, x)) for x in uint8_batches]

  def extractor_host_only():
    return [parallel.to_global(extractor.prepare(images[s:s + batch]), sharding)
            for s in range(0, args.n, batch)]

  timers = {"extractor": Timed(lambda: extractor.outputs(images)),
            "eval_forward": Timed(eval_forward),
            "extractor_forward_only": Timed(extractor_forward_only),
            "extractor_host_only": Timed(extractor_host_only)}
  log(f"compiling and warming up (N={args.n}, batch {batch}, {shape}) ...")
  start = time.perf_counter()
  extracted = timers["extractor"].rep(record=False)
  extractor_first_s = time.perf_counter() - start
  start = time.perf_counter()
  probs = timers["eval_forward"].rep(record=False)
  eval_first_s = time.perf_counter() - start
  timers["extractor_forward_only"].rep(record=False)
  timers["extractor_host_only"].rep(record=False)
  log(f"timing {args.reps} reps of each ...")
  for _ in range(args.reps):
    for timer in timers.values():
      timer.rep()
  out = {"n": args.n, "batch": batch, "batches": len(float_batches),
         "padded_images": len(float_batches) * batch - args.n, "width": config.model.width,
         "model": config.model.name, "image_shape": list(shape), "feature_dim": extractor.dim,
         "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
         "train_and_evaluate_s": train_s, "extractor_first_call_s": extractor_first_s,
         "eval_forward_first_call_s": eval_first_s,
         "probs_max_abs_diff": float(np.max(np.abs(extracted["probs"] - probs)))}
  for name, timer in timers.items():
    out.update(timer.figures(args.n, name))
  out["ratio"] = ratio(out["extractor_images_per_s"], out["eval_forward_images_per_s"])
  out["ratio_cpu"] = ratio(out["eval_forward_cpu_s_median"], out["extractor_cpu_s_median"])
  out["forward_only_ratio"] = ratio(out["extractor_forward_only_images_per_s"],
                                    out["eval_forward_images_per_s"])
  out["host_fraction_of_extractor"] = ratio(out["extractor_host_only_s_median"],
                                            out["extractor_s_median"])
  return out, mesh


def bench_metrics(args) -> tuple[dict, dict]:
  """Seconds of each generation metric (one call each) on random real/fake float32 features."""
  import numpy as np
  from jaxsynth.metrics import generation as gm

  rng = np.random.default_rng(args.seed)
  n, d, k = args.metric_n, args.metric_dim, args.k
  real = rng.standard_normal((n, d), dtype=np.float32)
  fake = (0.9 * rng.standard_normal((n, d), dtype=np.float32) + 0.05).astype(np.float32)
  seconds, values = {}, {}

  def timed(name, fn):
    log(f"  {name} ...")
    start = time.perf_counter()
    result = fn()
    seconds[name] = time.perf_counter() - start
    return result

  log(f"metrics on {n} vs {n} features of {d} dims (k={k}) ...")
  # The first distance call compiles the block kernel for this shape; it is timed on its own.
  timed("knn_radii_first_call", lambda: gm.knn_radii(real, k))
  timed("knn_radii", lambda: gm.knn_radii(real, k))
  stats = timed("feature_stats", lambda: (gm.feature_stats(real), gm.feature_stats(fake)))
  values["fid"] = timed("frechet_distance", lambda: gm.frechet_distance(*stats[0], *stats[1]))
  seconds["fid"] = seconds["feature_stats"] + seconds["frechet_distance"]
  values["kid_mean"], values["kid_std"] = timed(
      "kid", lambda: gm.kid(real, fake, args.kid_subsets, args.kid_subset_size, args.seed))
  values.update(timed("precision_recall", lambda: gm.precision_recall(real, fake, k)))
  values.update(timed("density_coverage", lambda: gm.density_coverage(real, fake, k)))
  values["mmd"] = timed("mmd_rbf", lambda: gm.mmd_rbf(real, fake))
  scores = timed("realism_scores", lambda: gm.realism_scores(real, fake, k))
  values["realism_median"] = float(np.median(scores))
  report = timed("generation_metrics", lambda: gm.generation_metrics(
      real, fake, k=k, kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
      seed=args.seed))
  parts = ("fid", "kid", "precision_recall", "density_coverage", "mmd_rbf")
  seconds["sum_of_parts_in_report"] = sum(seconds[p] for p in parts)
  values["report"] = report
  return seconds, values


def run(args) -> dict:
  """Runs the asked parts and returns the result object."""
  configure_xla(args)
  import flax
  import jax
  import jaxlib
  import numpy as np
  from jaxsynth.training import parallel

  result = {"benchmark": "generation_metrics", "config": vars(args).copy()}
  load_at_start = os.getloadavg()[0]
  mesh = None
  if "extraction" in args.parts:
    result["extraction"], mesh = bench_extraction(args)
  if "metrics" in args.parts:
    result["metrics_seconds"], result["metric_values"] = bench_metrics(args)
  if mesh is None:
    import ml_collections
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1}))
  result["device"] = {**device_info(mesh), **machine(), "jaxlib": jaxlib.__version__,
                      "xla_platform_version": jax.devices()[0].client.platform_version,
                      "load_avg_1min_at_start": load_at_start}
  result["versions"] = {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                        "flax": flax.__version__, "numpy": np.__version__,
                        "python": platform.python_version()}
  extraction_ratio = result.get("extraction", {}).get("ratio")
  result["aims"] = {"extraction_ratio_ge_0.9": (None if extraction_ratio is None else
                                                extraction_ratio >= AIMS["extraction_ratio"])}
  return result


def main(argv=None) -> dict:
  """Prints progress to stderr and the result as one JSON line on stdout; returns it."""
  args = parse_args(argv)
  with contextlib.redirect_stdout(sys.stderr):
    result = run(args)
  print(json.dumps(result, sort_keys=True))
  return result


if __name__ == "__main__":
  main()
