"""The fault-injection harness: run a real task as users do, SIGKILL it, rerun, compare.

A `TaskCase` says how to run one task from the command line (`python -m jaxsynth.main ...`),
which failpoints it passes (jaxsynth/faults.py) and what of its end state must equal an
uninterrupted run's (`outcome`). `run_with_kills` runs the same command repeatedly on one
workdir, killing the first runs (at a failpoint, or after a number of seconds) and letting the
last one finish; `compare` lists what differs from the reference. A later task joins the
harness by adding its case to `CASES` (a few lines: its command, its points, its outcome).

Used by the CI cases in tests/faults/ and by the randomised campaign in bench/faults.py.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from jaxsynth import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KILLED = -signal.SIGKILL
TIMING_KEYS = ("train/steps_per_s", "images_per_s", "decode")   # wall-clock figures: never compared

# Tiny runs: 8 px digits, seconds per run on 2 cores.
CLASSIFIER_ARGS = (
    "--config", "configs/default.py:classifier", "--config.data.image_size=8", "--config.data.threads=2",
    "--config.model.width=8", "--config.train.batch_size=16", "--config.train.eval_batch_size=64",
    "--config.train.steps=12", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
    "--config.train.log_every=1", "--config.train.keep_checkpoints=2")
DIFFUSION_ARGS = (
    "--config", "configs/diffusion.py:unet", "--config.data.image_size=8",
    "--config.data.threads=2", "--config.model.unet.channels=(16,32)",
    "--config.model.unet.res_blocks=1", "--config.model.unet.attn_resolutions=()",
    "--config.model.unet.head_dim=8", "--config.model.unet.mid_attention=False",
    "--config.diffusion.num_timesteps=100", "--config.diffusion.sample_steps=3",
    "--config.diffusion.grid_per_class=1", "--config.diffusion.val_batches=1",
    "--config.train.batch_size=16", "--config.train.eval_batch_size=32",
    "--config.train.steps=6", "--config.train.log_every=1", "--config.train.eval_every=2",
    "--config.train.checkpoint_every=2", "--config.train.sample_every=6",
    "--config.train.keep_checkpoints=2")


# A VQ autoencoder with every kind of state: EMA-free codebook, usage statistics, dead-code
# restarts (every 2 steps) and the PatchGAN critic (from step 2).
AUTOENCODER_ARGS = (
    "--config", "configs/autoencoder.py:vq:tiny", "--config.data.threads=2",
    "--config.loss.disc_weight=0.8", "--config.loss.disc_start=2",
    "--config.train.restart_threshold=0.0615", "--config.train.steps=6",
    "--config.train.checkpoint_every=2", "--config.train.eval_every=2",
    "--config.train.keep_checkpoints=2", "--config.train.log_every=1")


# BAGAN-GP: a 4-step supervised autoencoder stage in WORKDIR/autoencoder, then 6 rounds of 5
# critic updates and one generator update, checkpoints every 2 steps in both stages.
GAN_ARGS = (
    "--config", "configs/bagan_gp.py:tiny", "--config.data.threads=2",
    "--config.gan.autoencoder_steps=4", "--config.train.steps=6",
    "--config.train.checkpoint_every=2", "--config.train.sample_every=3",
    "--config.train.keep_checkpoints=2", "--config.train.log_every=1")


CYCLEGAN_ARGS = (
    "--config", "configs/cyclegan.py:tiny", "--config.data.threads=2", "--config.train.steps=6",
    "--config.train.checkpoint_every=2", "--config.train.sample_every=3",
    "--config.train.keep_checkpoints=2", "--config.train.log_every=1")


def gan_outcome(workdir: str) -> dict:
  """A GAN run's training outcome plus its autoencoder stage's (checkpoints, metrics, log)."""
  out = training_outcome(workdir)
  stage = training_outcome(os.path.join(workdir, "autoencoder"))
  out.update({f"autoencoder/{k}": v for k, v in stage.items()})
  return out


def gan_sample_args(run_dir: str) -> tuple[str, ...]:
  """The small sweep (60 samples in 10 shards) from the GAN run in `run_dir`."""
  return tuple(a for a in sample_args(run_dir) if not a.startswith("--config.sample.num_steps"))


def ldm_args(autoencoder_dir: str) -> tuple[str, ...]:
  """A tiny UNet on the latents of the autoencoder run (a 2-shard train cache, 1 val shard)."""
  unet = [a for a in DIFFUSION_ARGS[2:] if not a.startswith("--config.data.image_size")]
  return ("--config", "configs/diffusion.py:ldm", f"--config.latent.autoencoder_run={autoencoder_dir}",
          "--config.latent.checkpoint=latest", "--config.data.image_size=12", *unet)


def ldm_outcome(workdir: str) -> dict:
  """A latent diffusion run's training outcome plus its latent cache (manifest and shards)."""
  out = training_outcome(workdir)
  cache = os.path.join(workdir, "latents")
  out["latents/manifest.json"] = _json_file(os.path.join(cache, "manifest.json"))
  for path in sorted(glob.glob(os.path.join(cache, "*", "shard-*.npz"))):
    with open(path, "rb") as f:
      out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def sample_args(run_dir: str) -> tuple[str, ...]:
  """A small sweep (60 samples in 10 shards) from the diffusion run in `run_dir`."""
  return ("--config", "configs/diffusion.py:sample", f"--config.sample.run_dir={run_dir}",
          "--config.sample.budget=counts", "--config.sample.class_counts=" + repr((6,) * 10),
          "--config.sample.num_steps=3", "--config.sample.shard_size=6",
          "--config.sample.batch_size=4")


def filtered_sample_args(run_dir: str, classifier_dir: str) -> tuple[str, ...]:
  """The small sweep, kept by the classifier filter of `classifier_dir`, topped up in rounds."""
  return sample_args(run_dir) + ("--config.sample.filter.name=classifier",
                                 f"--config.sample.filter.classifier={classifier_dir}",
                                 "--config.sample.filter.batch_size=16",
                                 "--config.sample.max_attempts=4")


def filter_args(sweep_dir: str, classifier_dir: str) -> tuple[str, ...]:
  """The class-based realism filter of a finished sweep, on the classifier's features."""
  return ("--config", "configs/filter.py:realism_class", f"--config.filter.input={sweep_dir}",
          f"--config.filter.features=classifier:{classifier_dir}",
          "--config.filter.batch_size=16")


RECIPE_ARGS = ("--config", "configs/synthesis.py:augment_tiny")


ONLINE_ARGS = ("--config", "configs/synthesis.py:online_tiny")


def recipe_outcome(workdir: str, classifier_stages=("baseline", "augmented")) -> dict:
  """What a recipe must end with: its metrics, comparison and report tables, and the
  predictions of its classifier stages."""
  out = {"metrics.json": _json_file(os.path.join(workdir, "metrics.json")),
         "comparison.json": _json_file(os.path.join(workdir, "comparison.json"))}
  with open(os.path.join(workdir, "report.md"), encoding="utf-8") as f:
    out["report.md tables"] = [line for line in f.read().splitlines() if line.startswith("|")]
  for stage in classifier_stages:
    out[f"{stage}/predictions.npz"] = _npz_arrays(os.path.join(workdir, stage,
                                                               "predictions.npz"))
  return out


def evaluate_args(run_dir: str) -> tuple[str, ...]:
  """Evaluation of the classifier run in `run_dir` (its own config's model and data keys)."""
  return CLASSIFIER_ARGS + ("--config.task=evaluate", f"--config.evaluate.run_dir={run_dir}",
                            "--config.evaluate.bootstrap=50")


# ------------------------------------------------------------------------------- running


def env(extra: dict | None = None) -> dict:
  """The environment of a task subprocess: CPU, a shared compile cache, no failpoint armed."""
  out = {k: v for k, v in os.environ.items() if k != "JAXSYNTH_FAULT"}
  out.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             JAX_COMPILATION_CACHE_DIR=out.get("JAXSYNTH_TEST_XLA_CACHE") or os.path.join(
                 tempfile.gettempdir(), "jaxsynth-test-xla-cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  out.update(extra or {})
  return out


@dataclasses.dataclass
class RunRecord:
  """One process of a chain: how it was stopped and how it ended."""
  kill: str                # "point:NAME[@n]", "after:SECONDS" or "none"
  returncode: int
  seconds: float
  stderr_tail: str

  @property
  def killed(self) -> bool:
    return self.returncode == KILLED


def run_once(args, workdir: str, kill: str = "none", timeout: float = 600,
             extra_env: dict | None = None, file_size_limit_kb: int = 0) -> RunRecord:
  """Runs `python -m jaxsynth.main ARGS --workdir W` once, killed as `kill` says.

  `file_size_limit_kb` > 0 runs it under `ulimit -f` (with SIGXFSZ ignored, so a write past the
  limit fails with EFBIG, as on a full disk, instead of killing the process).
  """
  extra = dict(extra_env or {})
  delay = None
  if kill.startswith("point:"):
    extra["JAXSYNTH_FAULT"] = kill[len("point:"):]
  elif kill.startswith("after:"):
    delay = float(kill[len("after:"):])
  command = [sys.executable, "-m", "jaxsynth.main", *args, "--workdir", workdir]
  if file_size_limit_kb:
    command = ["bash", "-c", f"trap '' XFSZ; ulimit -f {int(file_size_limit_kb)}; exec \"$@\"",
               "bash", *command]
  t0 = time.perf_counter()
  with tempfile.TemporaryFile() as err:
    proc = subprocess.Popen(command, cwd=ROOT, env=env(extra), stdout=subprocess.DEVNULL,
                            stderr=err)
    try:
      if delay is not None:
        try:
          proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
          proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=timeout)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    err.seek(0)
    tail = err.read().decode("utf-8", "replace")[-20000:]
  return RunRecord(kill, proc.returncode, time.perf_counter() - t0, tail)


def run_with_kills(args, workdir: str, kills, timeout: float = 600) -> list[RunRecord]:
  """Runs the command once per kill (each on the same workdir), then once to the end."""
  records = [run_once(args, workdir, kill, timeout) for kill in kills]
  records.append(run_once(args, workdir, "none", timeout))
  return records


# ------------------------------------------------------------------------------- outcomes


def _without_timing(obj):
  if isinstance(obj, dict):
    return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
  if isinstance(obj, list):
    return [_without_timing(v) for v in obj]
  return obj


def _canonical(obj) -> str:
  """JSON text of `obj` without wall-clock keys, for equality checks."""
  return json.dumps(_without_timing(obj), sort_keys=True)


def _digest_arrays(tree) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = np.asarray(leaf)
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(str(array.dtype).encode() + str(array.shape).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def checkpoint_digest(workdir: str, which: str, step: int) -> str:
  """SHA-256 over the arrays (names, dtypes, shapes, bytes) of a saved train state."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.abspath(workdir), "checkpoints", which, str(step), "state")
  with ocp.StandardCheckpointer() as checkpointer:
    return _digest_arrays(checkpointer.restore(path))


def _json_file(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return _canonical(json.load(f))


def _log_lines(workdir: str) -> str:
  with open(os.path.join(workdir, "log.jsonl"), encoding="utf-8") as f:
    return _canonical([json.loads(line) for line in f])


def _npz_arrays(path: str) -> str:
  with np.load(path, allow_pickle=False) as data:
    return _digest_arrays({k: data[k] for k in sorted(data.files)})


def training_outcome(workdir: str) -> dict:
  """What a training run must end with: every kept checkpoint's state, metrics, the log."""
  out = {"metrics.json": _json_file(os.path.join(workdir, "metrics.json")),
         "log.jsonl": _log_lines(workdir)}
  for which in ("latest", "best"):
    steps = config_lib.checkpoint_steps(workdir, which)
    out[f"{which} steps"] = steps
    for step in steps:
      out[f"{which}/{step}"] = checkpoint_digest(workdir, which, step)
  if os.path.exists(os.path.join(workdir, "predictions.npz")):
    out["predictions.npz"] = _npz_arrays(os.path.join(workdir, "predictions.npz"))
  for grid in sorted(glob.glob(os.path.join(workdir, "grids", "*.png"))):
    with open(grid, "rb") as f:
      out[os.path.relpath(grid, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def evaluation_outcome(workdir: str) -> dict:
  """What an evaluation must end with: its metrics and predictions."""
  return {"metrics.json": _json_file(os.path.join(workdir, "metrics.json")),
          "predictions.npz": _npz_arrays(os.path.join(workdir, "predictions.npz"))}


def sweep_outcome(workdir: str) -> dict:
  """What a sweep must end with: every shard's bytes, the manifest, the sample indices."""
  directory = os.path.join(workdir, "samples")
  out = {"metrics.json": _json_file(os.path.join(workdir, "metrics.json")),
         "manifest.json": _json_file(os.path.join(directory, "manifest.json"))}
  indices = []
  for path in sorted(glob.glob(os.path.join(directory, "shard-*.npz"))):
    with open(path, "rb") as f:
      out[os.path.basename(path)] = hashlib.sha256(f.read()).hexdigest()
    with np.load(path, allow_pickle=False) as shard:
      indices.append(shard["index"])
  out["index"] = np.concatenate(indices).tolist() if indices else []
  return out


def filtered_outcome(workdir: str) -> dict:
  """What a filtered set must end with: the sweep outcome, the report and its plots."""
  out = sweep_outcome(workdir)
  out["filter_report.json"] = _json_file(os.path.join(workdir, "filter_report.json"))
  with open(os.path.join(workdir, "filter_report.json"), encoding="utf-8") as f:
    out["acceptance rounds"] = json.load(f)["acceptance"].get("rounds", 1)
  for path in sorted(glob.glob(os.path.join(workdir, "plots", "*.png"))
                     + glob.glob(os.path.join(workdir, "candidates", "*", "shard-*.npz"))):
    with open(path, "rb") as f:
      out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def sample_accounting(outcome: dict, total: int) -> dict:
  """Samples lost (never written) and duplicated (written twice) in a sweep outcome."""
  index = np.asarray(outcome.get("index", []), np.int64)
  counts = np.bincount(index, minlength=total) if index.size else np.zeros(total, np.int64)
  return {"lost": int(np.sum(counts[:total] == 0)), "duplicated": int(np.sum(counts > 1)),
          "outside": int(np.sum(index >= total))}


def compare(reference: dict, outcome: dict) -> list[str]:
  """The keys whose values differ between two outcomes (empty: identical)."""
  return sorted(k for k in set(reference) | set(outcome) if reference.get(k) != outcome.get(k))


# ------------------------------------------------------------------------------ the cases


@dataclasses.dataclass(frozen=True)
class TaskCase:
  """How the harness runs one task, where it can be killed, and what must come out the same."""
  name: str
  args: Callable[[dict], tuple]        # inputs (name -> workdir of a finished case) -> CLI args
  outcome: Callable[[str], dict]
  points: tuple[str, ...]              # failpoints the task passes (jaxsynth/faults.POINTS)
  needs: tuple[str, ...] = ()          # cases whose finished runs it reads
  samples: int = 0                     # a sweep's budget, for the lost/duplicated count


CASES = {
    "train_classifier": TaskCase(
        "train_classifier", lambda inputs: CLASSIFIER_ARGS, training_outcome,
        ("checkpoint.save_in_flight", "checkpoint.before_commit", "checkpoint.prune",
         "loop.between_best_and_latest", "loop.after_checkpoint", "task.before_metrics",
         "file.before_rename")),
    "evaluate": TaskCase(
        "evaluate", lambda inputs: evaluate_args(inputs["train_classifier"]),
        evaluation_outcome, ("file.before_rename", "task.before_metrics"),
        needs=("train_classifier",)),
    "train_diffusion": TaskCase(
        "train_diffusion", lambda inputs: DIFFUSION_ARGS, training_outcome,
        ("checkpoint.save_in_flight", "checkpoint.before_commit", "checkpoint.prune",
         "loop.between_best_and_latest", "loop.after_checkpoint", "task.before_metrics",
         "file.before_rename")),
    "sample": TaskCase(
        "sample", lambda inputs: sample_args(inputs["train_diffusion"]), sweep_outcome,
        ("shard.before_rename", "manifest.before_rename", "file.before_rename"),
        needs=("train_diffusion",), samples=60),
    "filtered_sample": TaskCase(
        "filtered_sample",
        lambda inputs: filtered_sample_args(inputs["train_diffusion"], inputs["train_classifier"]),
        filtered_outcome,
        ("shard.before_rename", "manifest.before_rename", "scores.before_rename",
         "file.before_rename"),
        needs=("train_diffusion", "train_classifier")),
    "filter": TaskCase(
        "filter", lambda inputs: filter_args(inputs["sample"], inputs["train_classifier"]),
        filtered_outcome,
        ("scores.before_rename", "shard.before_rename", "manifest.before_rename",
         "file.before_rename"),
        needs=("sample", "train_classifier")),
    "recipe": TaskCase(
        "recipe", lambda inputs: RECIPE_ARGS, recipe_outcome,
        ("checkpoint.save_in_flight", "loop.after_checkpoint", "task.before_metrics",
         "shard.before_rename", "manifest.before_rename", "file.before_rename")),
    "train_autoencoder": TaskCase(
        "train_autoencoder", lambda inputs: AUTOENCODER_ARGS, training_outcome,
        ("checkpoint.save_in_flight", "checkpoint.before_commit", "checkpoint.prune",
         "loop.between_best_and_latest", "loop.after_checkpoint", "task.before_metrics",
         "file.before_rename")),
    "ldm": TaskCase(
        "ldm", lambda inputs: ldm_args(inputs["train_autoencoder"]), ldm_outcome,
        ("latents.before_rename", "checkpoint.save_in_flight", "loop.after_checkpoint",
         "task.before_metrics", "file.before_rename"),
        needs=("train_autoencoder",)),
    "ldm_sample": TaskCase(
        "ldm_sample", lambda inputs: sample_args(inputs["ldm"]), sweep_outcome,
        ("shard.before_rename", "manifest.before_rename", "file.before_rename"),
        needs=("ldm",), samples=60),
    "train_gan": TaskCase(
        "train_gan", lambda inputs: GAN_ARGS, gan_outcome,
        ("checkpoint.save_in_flight", "checkpoint.before_commit", "checkpoint.prune",
         "loop.after_checkpoint", "task.before_metrics", "file.before_rename")),
    "train_cyclegan": TaskCase(
        "train_cyclegan", lambda inputs: CYCLEGAN_ARGS, training_outcome,
        ("checkpoint.save_in_flight", "checkpoint.before_commit", "checkpoint.prune",
         "loop.after_checkpoint", "task.before_metrics", "file.before_rename")),
    "gan_sample": TaskCase(
        "gan_sample", lambda inputs: gan_sample_args(inputs["train_gan"]), sweep_outcome,
        ("shard.before_rename", "manifest.before_rename", "file.before_rename"),
        needs=("train_gan",), samples=60),
    # IOIS: the online stage's own loop (guided shards, a checkpoint per epoch, epoch.json)
    "online_recipe": TaskCase(
        "online_recipe", lambda inputs: ONLINE_ARGS,
        lambda workdir: recipe_outcome(workdir, ("baseline", "online")),
        ("checkpoint.save_in_flight", "loop.after_checkpoint", "task.before_metrics",
         "shard.before_rename", "manifest.before_rename", "file.before_rename")),
}


def reference_run(case: TaskCase, workdir: str, inputs: dict) -> tuple[dict, float]:
  """Runs `case` uninterrupted into `workdir`; returns (outcome, wall seconds)."""
  record = run_once(case.args(inputs), workdir)
  if record.returncode != 0:
    raise RuntimeError(f"reference run of {case.name} failed ({record.returncode}):\n"
                       f"{record.stderr_tail}")
  return case.outcome(workdir), record.seconds
