"""Sampling sweeps: class budgets, the deterministic sample list, and the sharded, resumable loop
that writes `samples/shard-NNNNN.npz` and `manifest.json` (format: data/synthetic_format.py).

The sweep is a fixed list of N samples: sample i has label `labels[i]` (an interleaved
enumeration of the class budget; for a group-conditioned generator, of the budget per group or
(class, group) cell, with the group written to `groups[i]`) and its randomness comes from
fold_in(root_key, i) inside the sampler, so sample i is the same image whatever the batch size,
the device count or where a killed sweep resumed. Shard k holds samples [k·S, min((k+1)·S, N))
and belongs to process k mod P; a finished shard is never rewritten, so a resumed sweep has no
gap and no duplicate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Callable

import jax
import numpy as np

from jaxsynth import files
from jaxsynth.data import synthetic_format
from jaxsynth.data.conditions import Conditioning
from jaxsynth.errors import CheckpointError, ConfigError, DataError
from jaxsynth.synthesis import filters
from jaxsynth.training import parallel
from jaxsynth.training.loop import Preempted, StopRequest, handle_signals
from jaxsynth.training.writers import Progress

log = logging.getLogger(__name__)

BUDGETS = ("counts", "balance", "ratio")
QUARANTINE = synthetic_format.QUARANTINE
ROUNDS_DIR = "candidates"   # a filtered sweep's rounds of candidates: candidates/round-RRR/
PLAN_FILE = "plan.json"     # the sweep's plan, written once at its start (never rewritten)
# The manifest keys that fix which samples a sweep draws, recorded in plan.json.
PLAN_KEYS = ("num_classes", "image_shape", "counts", "total", "shard_size", "seed", "run_dir",
             "checkpoint", "compute_dtype", "sampler", "schedule", "label_order")
# Plan keys added later, with the value a plan recorded before them has.
OPTIONAL_PLAN_KEYS = {"first_index": 0, "filter": None, "condition": "class", "num_groups": None}
# The per-condition counts key of sample.budget=counts, by diffusion.condition.
COUNTS_KEYS = {"class": "class_counts", "group": "group_counts", "class_group": "cell_counts"}


def largest_remainder(total: int, weights) -> np.ndarray:
  """Splits `total` into integers proportional to `weights` that sum exactly to `total`."""
  weights = np.asarray(weights, np.float64)
  exact = total * weights / weights.sum()
  counts = np.floor(exact).astype(np.int64)
  # Hand the remaining units to the largest remainders (ties to the lower class index).
  order = np.argsort(-(exact - counts), kind="stable")
  counts[order[:total - int(counts.sum())]] += 1
  return counts


def class_budget(sample_cfg, num_classes: int, train_counts=None) -> np.ndarray:
  """Samples to draw per class, from sample.budget = counts | balance | ratio."""
  budget = sample_cfg.budget
  if budget == "counts":
    counts = np.asarray(tuple(sample_cfg.class_counts), np.int64)
    if counts.shape != (num_classes,) or np.any(counts < 0):
      raise ConfigError(f"config key 'sample.class_counts' = {tuple(sample_cfg.class_counts)} "
                        f"must give one count >= 0 for each of the {num_classes} classes")
  elif budget == "balance":
    have = np.asarray(train_counts, np.int64)
    if have.shape != (num_classes,):
      raise ConfigError(f"sample.budget=balance needs the train split's {num_classes} class "
                        f"counts, got {have.tolist()}")
    target = int(sample_cfg.per_class) or int(have.max())
    counts = np.maximum(target - have, 0)
  elif budget == "ratio":
    ratio = np.asarray(tuple(sample_cfg.ratio), np.float64)
    if ratio.shape != (num_classes,) or np.any(ratio < 0) or not ratio.sum() > 0:
      raise ConfigError(f"config key 'sample.ratio' = {tuple(sample_cfg.ratio)} must give one "
                        f"weight >= 0 for each of the {num_classes} classes, e.g. (0.3, 0.7)")
    if int(sample_cfg.total) < 1:
      raise ConfigError(f"config key 'sample.total' = {sample_cfg.total}: sample.budget=ratio "
                        "needs the total number of samples, e.g. --config.sample.total=1000")
    counts = largest_remainder(int(sample_cfg.total), ratio)
  else:
    raise ConfigError(f"config key 'sample.budget' has bad value {budget!r}: use one of "
                      f"{', '.join(BUDGETS)}")
  if counts.sum() == 0:
    raise ConfigError(f"sample.budget={budget} asks for no samples at all (per class "
                      f"{counts.tolist()}); raise sample.per_class, class_counts or total")
  return counts


def condition_budget(sample_cfg, conditioning: Conditioning, train_counts=None) -> np.ndarray:
  """Samples to draw per condition id (class, group or class-major cell; data/conditions.py).

  budget=counts reads the counts key of the run's condition (COUNTS_KEYS), balance tops every
  condition up to sample.per_class (`train_counts` per condition id), ratio is per class only.
  """
  mode = conditioning.mode
  if mode == "class":
    for key in ("group_counts", "cell_counts"):
      if tuple(sample_cfg.get(key, ())):
        raise ConfigError(f"config key 'sample.{key}' is set but the trained run is "
                          "conditioned on classes (diffusion.condition=class): use "
                          "sample.class_counts, or leave it empty")
    return class_budget(sample_cfg, conditioning.num_classes, train_counts)
  key, n = COUNTS_KEYS[mode], conditioning.num_conditions
  shape = (f"{conditioning.num_groups} groups" if mode == "group" else
           f"{conditioning.num_classes} classes x {conditioning.num_groups} groups = {n} "
           "cells, class-major")
  for other in set(COUNTS_KEYS.values()) - {key}:
    if tuple(sample_cfg.get(other, ())):
      raise ConfigError(f"config key 'sample.{other}' is set but the trained run is "
                        f"conditioned on '{mode}' (diffusion.condition): give sample.{key}, "
                        f"one count per condition ({shape})")
  if sample_cfg.budget == "ratio":
    raise ConfigError(f"config key 'sample.budget' = 'ratio' is per class, but the trained run "
                      f"is conditioned on '{mode}': use budget=counts with sample.{key} "
                      f"({shape}) or budget=balance")
  if sample_cfg.budget == "counts":
    counts = np.asarray(tuple(sample_cfg.get(key, ())), np.int64)
    if counts.shape != (n,) or np.any(counts < 0):
      raise ConfigError(f"config key 'sample.{key}' = {tuple(sample_cfg.get(key, ()))} must "
                        f"give {n} counts >= 0, one per condition ({shape})")
    if counts.sum() == 0:
      raise ConfigError(f"config key 'sample.{key}' asks for no samples at all: give some "
                        "counts > 0")
    return counts
  # balance over the conditions: the class rule with one "class" per condition id
  return class_budget(sample_cfg, n, train_counts)


def make_plan(counts, shard_size: int, conditioning: Conditioning | None = None,
              first_index: int = 0) -> "Plan":
  """The plan of `counts` samples per condition id (interleaved), split into (labels, groups)."""
  ids = label_order(counts)
  if conditioning is None or not conditioning.uses_groups:
    return Plan(ids, int(shard_size), first_index)
  labels, groups = conditioning.split(ids)
  return Plan(labels, int(shard_size), first_index, groups, ids)


def label_order(counts) -> np.ndarray:
  """labels[i] of global sample i: classes interleaved in proportion to their counts."""
  # Class c's k-th sample sits at "time" (k + 1/2)/n_c; sorting by time (ties by class) spreads
  # every class evenly over the list, so any prefix of the sweep is nearly in budget.
  counts = np.asarray(counts, np.int64)
  labels = np.repeat(np.arange(counts.size), counts)
  rank = np.concatenate([np.arange(n) for n in counts]) if counts.size else np.zeros(0)
  times = (rank + 0.5) / np.maximum(counts[labels], 1)
  return labels[np.lexsort((labels, times))]


def to_uint8(images, mean, std) -> np.ndarray:
  """Normalised float images -> uint8 (x·std + mean, scaled to [0, 255], rounded, clipped);
  mean and std are scalars or per-channel arrays."""
  pixels = (np.asarray(images, np.float32) * np.float32(std) + np.float32(mean)) * 255.0
  return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Plan:
  """The fixed sample list of a sweep and its split into shards."""
  labels: np.ndarray      # (N,) label of each sample, in order
  shard_size: int
  first_index: int = 0    # global index of the first sample (a filtered sweep's later rounds)
  groups: np.ndarray | None = None      # (N,) group of each sample (group-conditioned runs)
  conditions: np.ndarray | None = None  # (N,) the denoiser's condition ids; None = labels

  @property
  def condition_ids(self) -> np.ndarray:
    """(N,) what the sampler is conditioned on for each sample."""
    return self.labels if self.conditions is None else self.conditions

  @property
  def num_shards(self) -> int:
    return -(-len(self.labels) // self.shard_size)

  def shard_range(self, k: int) -> tuple[int, int]:
    """[start, stop) positions in `labels` of shard k."""
    k = int(k)
    return k * self.shard_size, min((k + 1) * self.shard_size, len(self.labels))

  def global_range(self, k: int) -> tuple[int, int]:
    """[start, stop) global sample indices of shard k."""
    start, stop = self.shard_range(k)
    return start + self.first_index, stop + self.first_index

  def entry(self, k: int) -> dict:
    """The manifest entry of shard k."""
    start, stop = self.shard_range(k)
    return {"file": synthetic_format.shard_filename(k), "count": int(stop - start)}


def _local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(array))
  pieces = {}
  for shard in array.addressable_shards:
    pieces.setdefault(shard.index[0].start or 0, np.asarray(shard.data))
  return np.concatenate([pieces[k] for k in sorted(pieces)])


def _allgather_max(values: np.ndarray) -> np.ndarray:
  """Element-wise max of `values` over processes (itself on one process)."""
  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.max(multihost_utils.process_allgather(values), axis=0)


def previous_plan(directory: str) -> dict | None:
  """The plan (PLAN_KEYS) a sweep in `directory` started with: plan.json, else the manifest.

  None for a new sweep; a DataError when shards exist but neither file is readable.
  """
  for name in (PLAN_FILE, synthetic_format.MANIFEST):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
      continue
    try:
      with open(path, encoding="utf-8") as f:
        recorded = json.load(f)
      if isinstance(recorded, dict) and all(k in recorded for k in PLAN_KEYS):
        return {**{k: recorded[k] for k in PLAN_KEYS},
                **{k: recorded.get(k, v) for k, v in OPTIONAL_PLAN_KEYS.items()}}
      log.warning("%s lacks the sweep plan's keys; trying the next record", path)
    except (OSError, ValueError) as e:
      log.warning("%s is damaged (%s); trying the next record", path, str(e)[:100])
  if os.path.isdir(directory) and any(n.startswith("shard-") for n in os.listdir(directory)):
    raise DataError(f"{directory} holds shards but neither {PLAN_FILE} nor "
                    f"{synthetic_format.MANIFEST} is readable, so the plan they belong to is "
                    "unknown: rerun with --overwrite, or choose another --workdir")
  return None


def check_same_plan(previous: dict | None, header: dict, directory: str) -> None:
  """Raises DataError when the sweep in `directory` was started with another plan."""
  if previous is None:
    return
  keys = PLAN_KEYS + tuple(OPTIONAL_PLAN_KEYS)
  now = json.loads(json.dumps({k: header.get(k, OPTIONAL_PLAN_KEYS.get(k)) for k in keys}))
  changed = [k for k in keys if previous.get(k) != now[k]]
  if changed:
    raise DataError(f"the sweep in {directory} was started with another plan ("
                    + "; ".join(f"{k}: {previous.get(k)!r} -> {now[k]!r}" for k in changed[:3])
                    + "): rerun with --overwrite, or choose another --workdir")


def _plan_file_missing(directory: str) -> bool:
  """Whether plan.json is absent or unreadable (it is then written, once)."""
  try:
    with open(os.path.join(directory, PLAN_FILE), encoding="utf-8") as f:
      return not isinstance(json.load(f), dict)
  except (OSError, ValueError):
    return True


def damage(directory: str) -> str:
  """'' when the manifest reads and every shard it lists matches its sha256, else the problem."""
  try:
    manifest = synthetic_format.read_manifest(directory)
  except DataError as e:
    return str(e)
  for entry in manifest["shards"]:
    path = os.path.join(directory, entry["file"])
    if not os.path.exists(path):
      return f"shard {path} is missing"
    if entry.get("sha256") and files.sha256_file(path) != entry["sha256"]:
      return f"shard {path} is damaged (its bytes do not match the manifest's sha256)"
  return ""


def listed_digests(directory: str) -> dict[str, str]:
  """{file: sha256} of the shards the current manifest lists ({} without a readable one)."""
  if not os.path.exists(os.path.join(directory, synthetic_format.MANIFEST)):
    return {}
  try:
    manifest = synthetic_format.read_manifest(directory)
  except DataError as e:
    log.warning("%s; the sweep rebuilds it from the shards on disk", e)
    return {}
  return {s["file"]: s.get("sha256", "") for s in manifest["shards"]}


def finished_shards(directory: str, plan: Plan, owned: list[int], image_shape,
                    listed: dict[str, str] | None = None) -> tuple[np.ndarray, dict[int, str]]:
  """Flags (num_shards,) of the `owned` shards already on disk and good, and their sha256.

  A shard whose bytes differ from the manifest's sha256, or that does not read whole (a shard
  the manifest does not list yet is read in full), is moved to `quarantine/` with a warning and
  drawn again. A readable shard of other samples than this plan's is a DataError.
  """
  listed = listed or {}
  done = np.zeros(plan.num_shards, np.int32)
  digests = {}
  for k in owned:
    entry = plan.entry(k)
    path = os.path.join(directory, entry["file"])
    if not os.path.exists(path):
      continue
    with open(path, "rb") as f:
      data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    try:
      if listed.get(entry["file"]) and listed[entry["file"]] != digest:
        raise DataError(f"shard {path} is damaged: its bytes do not match the sha256 in "
                        f"{synthetic_format.MANIFEST}")
      images, labels, index = synthetic_format.read_shard(directory, entry, image_shape)
      groups = None
      if plan.groups is not None:
        groups = synthetic_format.read_shard_groups(directory, entry)
      # The writer is deterministic, so a good shard is exactly the encoding of its arrays:
      # this catches damage the CRCs do not cover (zip headers), manifest or not.
      if data != synthetic_format.npz_bytes(synthetic_format.shard_arrays(images, labels,
                                                                           index, groups)):
        raise DataError(f"shard {path} is damaged: its bytes are not the encoding of its "
                        "arrays")
    except DataError as e:
      log.warning("%s; moved to %s, drawing it again", e,
                  synthetic_format.quarantine(directory, path))
      continue
    start, stop = plan.shard_range(k)
    if not (np.array_equal(index, np.arange(*plan.global_range(k)))
            and np.array_equal(labels, plan.labels[start:stop])
            and (plan.groups is None or np.array_equal(groups, plan.groups[start:stop]))):
      raise DataError(f"shard {path} does not hold samples "
                      f"{plan.first_index + start}..{plan.first_index + stop - 1} of this "
                      "sweep's plan: the sweep settings changed; "
                      "rerun with --overwrite or choose another --workdir")
    done[k] = 1
    digests[k] = digest
  return done, digests


def run_sweep(sampler: Callable, params, root_key: jax.Array, plan: Plan, directory: str, *,
              batch_size: int, mesh, mean, std, manifest: dict,
              stop: StopRequest | None = None) -> dict:
  """Draws every unfinished shard of `plan` into `directory`; returns the final manifest.

  `sampler(params, labels, global_indices, root_key)` is make_sampler's jitted function over
  `mesh`; `manifest` holds num_classes, image_shape and any provenance to record. Process p
  fills its own shards (k mod P == p) from its slice of each global batch; process 0 rewrites
  manifest.json after every finished shard. A stop request (SIGTERM/SIGINT or `stop`, asked
  with the number of finished shards) raises Preempted once the finished shards are listed.
  """
  stop = stop or StopRequest()
  pid, nproc = jax.process_index(), jax.process_count()
  parallel.check_batch_divisible(batch_size, mesh, "sample.batch_size")
  local_batch = batch_size // nproc
  owned = [k for k in range(plan.num_shards) if k % nproc == pid]
  if pid == 0:
    files.remove_stale_temporaries(directory)
  listed = listed_digests(directory)
  done, digests = finished_shards(directory, plan, owned, manifest["image_shape"], listed)
  done = _allgather_max(done)
  pending = [k for k in owned if not done[k]]
  # This process's queue of (shard, global index); every process runs the same number of
  # batches (the most any needs), padding its slice once its queue is empty.
  queue = [(k, i) for k in pending for i in range(*plan.global_range(k))]
  num_batches = int(_allgather_max(np.array([-(-len(queue) // local_batch)]))[0])
  sharding = parallel.batch_sharding(mesh)
  total = len(plan.labels)
  progress = Progress(total, int(sum(plan.entry(k)["count"] for k in np.flatnonzero(done))),
                      unit="image")
  buffers: dict[int, list] = {}

  def entries() -> list[dict]:
    out = []
    for k in np.flatnonzero(done):
      if k not in digests:  # another process's shard: its bytes are on the shared disk
        digests[k] = files.sha256_file(os.path.join(directory, plan.entry(k)["file"]))
      out.append({**plan.entry(k), "sha256": digests[k]})
    return out

  def write_manifest(complete: bool) -> None:
    if pid == 0:
      synthetic_format.write_manifest(directory, {**manifest, "shards": entries(),
                                                  "complete": complete})

  if pid == 0 and _plan_file_missing(directory):
    recorded = {k: manifest[k] for k in PLAN_KEYS}
    recorded.update({k: manifest.get(k, v) for k, v in OPTIONAL_PLAN_KEYS.items()})
    files.atomic_write(os.path.join(directory, PLAN_FILE),
                       json.dumps(recorded, indent=2, sort_keys=True).encode("utf-8"))
  write_manifest(bool(done.all()))
  with handle_signals(stop):
    for b in range(num_batches):
      chunk = queue[b * local_batch:(b + 1) * local_batch]
      valid = len(chunk)
      index = np.array([i for _, i in chunk] + [plan.first_index] * (local_batch - valid),
                       np.int32)
      labels = plan.condition_ids[index - plan.first_index].astype(np.int32)
      batch = parallel.to_global({"labels": labels, "index": index}, sharding)
      images = to_uint8(_local_rows(sampler(params, batch["labels"], batch["index"], root_key)),
                        mean, std)
      finished = np.zeros_like(done)
      for row, (k, i) in enumerate(chunk):
        buffers.setdefault(k, []).append((i, images[row]))
        start, stop_index = plan.shard_range(k)
        if len(buffers[k]) == stop_index - start:
          rows = buffers.pop(k)
          written = synthetic_format.write_shard(
              directory, k, np.stack([r[1] for r in rows]), plan.labels[start:stop_index],
              np.array([r[0] for r in rows], np.int64),
              groups=None if plan.groups is None else plan.groups[start:stop_index])
          digests[k] = written["sha256"]
          finished[k] = 1
      finished = _allgather_max(finished)
      if finished.any():
        done = np.maximum(done, finished)
        write_manifest(bool(done.all()))
        count = int(sum(plan.entry(k)["count"] for k in np.flatnonzero(done)))
        progress.update(count, {"shards": float(done.sum())})
      requested = _allgather_max(np.array([int(stop(int(done.sum())))]))[0]
      if requested and not done.all():
        raise Preempted(f"sweep stopped on request after {int(done.sum())} of "
                        f"{plan.num_shards} shards; rerun the same command to resume")
  if not done.all():
    raise CheckpointError(f"sweep in {directory} ended with shards missing "
                          f"{np.flatnonzero(done == 0).tolist()[:10]}: rerun to finish them")
  return {**manifest, "shards": entries(), "complete": True,
          "images_per_s": progress.rate(total)}


def round_dir(workdir: str, r: int) -> str:
  """The directory of round `r`'s candidates in a filtered sweep."""
  return os.path.join(workdir, ROUNDS_DIR, f"round-{int(r):03d}")


def next_round_counts(budget, attempted, accepted, max_attempts: float) -> np.ndarray:
  """Candidates per class for the next round of a filtered sweep (0 where done or capped).

  Each class short of its budget draws its deficit over its acceptance rate so far (Laplace's
  (accepted + 1) / (attempted + 2), so a class never accepted still draws), times 1.2 so one
  round usually suffices, within the cap of max_attempts x budget attempts.
  """
  budget, attempted, accepted = (np.asarray(a, np.int64) for a in (budget, attempted, accepted))
  deficit = np.maximum(budget - accepted, 0)
  rate = (accepted + 1) / (attempted + 2)
  want = np.ceil(1.2 * deficit / rate).astype(np.int64)
  room = np.maximum(np.ceil(max_attempts * budget).astype(np.int64) - attempted, 0)
  return np.where(deficit > 0, np.minimum(want, room), 0)


def run_filtered_sweep(sampler: Callable, params, root_key: jax.Array, budget, workdir: str,
                       scorer, *, shard_size: int, batch_size: int, mesh, mean, std,
                       manifest: dict, max_attempts: float,
                       stop: StopRequest | None = None,
                       conditioning: Conditioning | None = None) -> dict:
  """Draws candidates in rounds until every class has `budget` accepted samples (or its cap).

  With a group-conditioned `conditioning`, "class" reads "condition id" (group or cell)
  throughout: `budget` is per condition id and the accepted set keeps the `groups`.

  Round 0 is the plain sweep of `budget`; round r+1 draws fresh global indices (after every
  earlier round's) for the classes still short, sized by `next_round_counts`. Each round is a
  plain, resumable sweep in candidates/round-RRR/, scored once (its scores/ folder). The
  accepted set is, per class, the first budget[c] accepted candidates in global-index order,
  written to WORKDIR/samples by filters.write_accepted: it depends on the plan and the filter
  only, not on the batch size, device count or where a killed run resumed.
  """
  budget = np.asarray(budget, np.int64)
  num_classes = budget.size
  attempted, accepted = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
  counts, first, rounds, ids = budget, 0, [], []
  while counts.sum() > 0:
    r = len(rounds)
    directory = round_dir(workdir, r)
    plan = make_plan(counts, shard_size, conditioning, first_index=first)
    header = {**manifest, "counts": counts.tolist(), "total": int(counts.sum()),
              "first_index": first, "round": r}
    check_same_plan(previous_plan(directory), header, directory)
    log.info("filtered sweep round %d: %d candidates (per class %s) from index %d", r,
             int(counts.sum()), counts.tolist(), first)
    run_sweep(sampler, params, root_key, plan, directory, batch_size=batch_size, mesh=mesh,
              mean=mean, std=std, manifest=header, stop=stop)
    scores = filters.score_sweep(directory, scorer, os.path.join(directory, filters.SCORES_DIR))
    rounds.append((directory, scores))
    ids.append(plan.condition_ids[scores["index"] - first])  # the labels, for condition=class
    attempted += np.bincount(ids[-1], minlength=num_classes)
    accepted += np.bincount(ids[-1][scores["accept"]], minlength=num_classes)
    first += int(counts.sum())
    counts = next_round_counts(budget, attempted, accepted, max_attempts)
  labels = np.concatenate(ids)
  accept, index = (np.concatenate([s[key] for _, s in rounds]) for key in ("accept", "index"))
  keep = filters.keep_mask(labels, accept, index, budget)
  names = (conditioning.names() if conditioning is not None and conditioning.uses_groups
           else manifest.get("class_names") or ())
  report = filters.acceptance(labels, accept, keep, num_classes, names, budget)
  report.update(rounds=len(rounds), max_attempts=float(max_attempts))
  short = [name for name, c in report["per_class"].items() if not c["met"]]
  if short:
    log.warning("filtered sweep: classes %s stayed short of their budget after %s x budget "
                "attempts (sample.max_attempts); see the manifest's acceptance", short,
                max_attempts)
  bounds = np.cumsum([0] + [len(s["labels"]) for _, s in rounds])
  keeps = [keep[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
  header = {**manifest, "acceptance": report}
  return filters.write_accepted(os.path.join(workdir, synthetic_format.SAMPLES_DIR), rounds,
                                keeps, shard_size, header)
