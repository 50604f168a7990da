"""Filters of synthetic samples: the classifier filter keeps exactly the agreeing samples, the
realism filters equal a brute-force eq. 11, and filtered sweeps with top-up meet every class
budget with the same bytes whatever the batch size or where a stopped sweep resumed."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxsynth.data import synthetic_format
from jaxsynth.data.sources.synthetic import SyntheticSource
from jaxsynth.errors import ConfigError, DataError
from jaxsynth.models.registry import make_classifier
from jaxsynth.synthesis import filters, sweep
from jaxsynth.recipes import classifier as classifier_lib
from jaxsynth.tasks import classifier
from jaxsynth.tasks.filter import filter_sweep
from jaxsynth.training import parallel, train_state
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.loop import Preempted, StopRequest
from jaxsynth.training.optim import make_optimizer
from tests.helpers import tiny_config

MESH_CFG = ml_collections.ConfigDict({"data": -1})


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
  """A finished tiny classifier on 8 px digits (10 classes)."""
  workdir = str(tmp_path_factory.mktemp("judge"))
  classifier.train_and_evaluate(tiny_config(steps=12), workdir)
  return workdir


def write_sweep(directory, images, labels, shard_size=7, run_dir=""):
  """A finished sweep of the given samples, as the sample task writes it."""
  entries = []
  for k, start in enumerate(range(0, len(labels), shard_size)):
    rows = slice(start, start + shard_size)
    entries.append(synthetic_format.write_shard(directory, k, images[rows], labels[rows],
                                                np.arange(len(labels))[rows]))
  manifest = {"num_classes": 10, "image_shape": list(images.shape[1:]), "shards": entries,
              "complete": True, "shard_size": shard_size}
  if run_dir:
    manifest["run_dir"] = run_dir
  synthetic_format.write_manifest(directory, manifest)
  return directory


def random_samples(n=40, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
          rng.integers(0, 10, n).astype(np.int64))


def reference_probs(run_dir, directory):
  """Class probabilities of the sweep's samples by the classifier's own evaluation path."""
  config = ml_collections.ConfigDict(json.load(open(os.path.join(run_dir, "config.json"))))
  model = make_classifier(config.model, 10)
  mesh = parallel.make_mesh(MESH_CFG)
  tx = make_optimizer(config.train, optax.constant_schedule(0.0))
  abstract = train_state.abstract_state(model, tx, (8, 8, 1), mesh)
  checkpointer = Checkpointer(run_dir, 10, read_only=True)
  state, _ = checkpointer.restore(abstract, config.evaluate.checkpoint)
  checkpointer.close()
  predict = classifier_lib.make_predict_step(model, config.train.ema_decay > 0, mesh)
  _, probs = classifier_lib.predict_split(predict, state, SyntheticSource(directory), config.data,
                                      32, mesh)
  return probs


def filter_config(**keys):
  from configs import filter as filter_configs
  config = filter_configs.get_config(keys.pop("variant", "classifier"))
  config.filter.update(batch_size=16, **keys)
  return config


def read_kept(workdir):
  source = SyntheticSource(os.path.join(workdir, "samples"))
  scores = np.concatenate([np.load(os.path.join(source.directory, s["file"]))["score"]
                           for s in source.shards])
  return source.index, source.labels, scores


@pytest.mark.parametrize("min_confidence", [0.0, 0.12])
def test_classifier_filter_keeps_exactly_the_agreeing_samples(classifier_run, tmp_path,
                                                              min_confidence):
  images, labels = random_samples()
  # Half the samples carry the label the classifier predicts, so both outcomes occur.
  directory = write_sweep(str(tmp_path / "sweep"), images, labels)
  probs = reference_probs(classifier_run, directory)
  labels[::2] = np.argmax(probs, -1)[::2]
  directory = write_sweep(str(tmp_path / "sweep2"), images, labels)
  result = filter_sweep(filter_config(input=directory, classifier=classifier_run,
                                      min_confidence=min_confidence), str(tmp_path / "out"))
  intended = probs[np.arange(len(labels)), labels]
  agree = (np.argmax(probs, -1) == labels) & (intended >= min_confidence - 1e-6)
  index, kept_labels, scores = read_kept(str(tmp_path / "out"))
  np.testing.assert_array_equal(index, np.flatnonzero(agree))
  np.testing.assert_array_equal(kept_labels, labels[agree])
  np.testing.assert_allclose(scores, intended[agree], atol=1e-5)
  assert result["accepted"] == agree.sum() and 0 < agree.sum() < len(labels)
  report = json.load(open(tmp_path / "out" / "filter_report.json"))
  assert report["acceptance"]["kept"] == agree.sum()
  assert all(os.path.exists(tmp_path / "out" / p) for p in report["plots"])


def brute_realism(real, fake, k):
  """eq. 11 by loops: max over real r of radius_k(r) / |g - r|."""
  radii = []
  for r in real:
    d = sorted(float(np.linalg.norm(r - o)) for o in real)
    radii.append(d[k])  # d[0] = 0 is the point itself
  return np.array([max(radius / np.linalg.norm(g - r) for r, radius in zip(real, radii))
                   for g in fake])


@pytest.mark.parametrize("variant", ["realism", "realism_class"])
def test_realism_filters_equal_brute_force(tmp_path, variant):
  rng = np.random.default_rng(1)
  real_images = rng.integers(0, 256, (30, 4, 4, 1), dtype=np.uint8)
  real_labels = np.arange(30) % 3
  np.savez(tmp_path / "real.npz", images=real_images, labels=real_labels)
  fake_images = np.concatenate([real_images[:6] // 2 + real_images[6:12] // 2,
                                rng.integers(0, 256, (14, 4, 4, 1), dtype=np.uint8)])
  fake_labels = np.arange(20) % 3
  directory = write_sweep(str(tmp_path / "sweep"), fake_images, fake_labels)
  filter_sweep(filter_config(variant=variant, input=directory, features="pixels", k=2,
                             real=str(tmp_path / "real.npz")), str(tmp_path / "out"))
  real = real_images.reshape(30, -1) / 255.0
  fake = fake_images.reshape(20, -1) / 255.0
  if variant == "realism":
    expected = brute_realism(real, fake, 2)
  else:
    expected = np.array([brute_realism(real[real_labels == c], fake[i:i + 1], 2)[0]
                         for i, c in enumerate(fake_labels)])
  scores = np.concatenate([np.load(p)["score"] for p in sorted(
      (tmp_path / "out" / "scores").glob("shard-*.npz"))])
  np.testing.assert_allclose(scores, expected, rtol=1e-4)
  index, _, kept_scores = read_kept(str(tmp_path / "out"))
  np.testing.assert_array_equal(index, np.flatnonzero(expected >= 1.0))
  assert (kept_scores >= 1.0).all()
  cached = list((tmp_path / "out" / "filter_cache").glob("real-*.npz"))
  assert len(cached) == 1


def test_keep_mask_takes_the_first_accepted_per_class_in_index_order():
  labels = np.array([0, 1, 0, 0, 1, 0, 1])
  accept = np.array([1, 1, 0, 1, 1, 1, 0], bool)
  index = np.array([10, 11, 2, 3, 4, 5, 6])
  keep = filters.keep_mask(labels, accept, index, budget=[2, 1])
  np.testing.assert_array_equal(np.flatnonzero(keep), [3, 4, 5])
  np.testing.assert_array_equal(filters.keep_mask(labels, accept, index), accept)


def test_next_round_counts_draw_the_deficit_over_the_rate_within_the_cap():
  counts = sweep.next_round_counts(budget=[10, 10, 10, 0], attempted=[10, 10, 50, 0],
                                   accepted=[10, 4, 0, 0], max_attempts=6)
  # class 0 is done; class 1: 6 short at rate 5/12 -> ceil(1.2 * 6 * 12/5) = 18; class 2: capped
  # at 60 - 50 = 10 attempts; class 3 has no budget.
  assert counts.tolist() == [0, 18, 10, 0]


# ------------------------------------------------------------------- filtered sweeps


SHAPE = (4, 4, 1)


def fake_sampler(mesh):
  """A sampler whose image i is a fixed function of the global index and label."""

  def sample(params, labels, index, key):
    del params, key
    grid = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
    phase = index.astype(jnp.float32)[:, None, None, None] * 0.731 + labels[:, None, None, None]
    return jnp.sin(phase + grid)

  return jax.jit(sample, in_shardings=(None, parallel.batch_sharding(mesh),
                                       parallel.batch_sharding(mesh), None),
                 out_shardings=parallel.batch_sharding(mesh))


def fake_scorer():
  """Accepts a sample when its first pixel is bright: about 40% of them."""

  def score(images, labels):
    del labels
    value = images[:, 0, 0, 0].astype(np.float32) / 255.0
    return value, value > 0.7

  return filters.Scorer({"name": "test", "batch_size": 1}, score, {"rule": "first pixel"})


def run_filtered(workdir, batch_size, stop=None, budget=(9, 5, 0, 7)):
  mesh = parallel.make_mesh(MESH_CFG)
  manifest = {"num_classes": 4, "image_shape": list(SHAPE), "shard_size": 4, "seed": 0,
              "run_dir": "", "checkpoint": {}, "compute_dtype": "float32", "sampler": {},
              "schedule": {}, "label_order": "interleaved", "filter": {"name": "test"},
              "class_names": ["a", "b", "c", "d"]}
  return sweep.run_filtered_sweep(fake_sampler(mesh), None, jax.random.PRNGKey(0),
                                  np.array(budget), workdir, fake_scorer(), shard_size=4,
                                  batch_size=batch_size, mesh=mesh, mean=0.5, std=0.5,
                                  manifest=manifest, max_attempts=20.0, stop=stop)


def sweep_bytes(workdir):
  directory = os.path.join(workdir, "samples")
  return {name: open(os.path.join(directory, name), "rb").read()
          for name in sorted(os.listdir(directory)) if name.startswith("shard-")}


def test_filtered_sweep_meets_every_budget_identically_for_any_batch_and_resume(tmp_path):
  manifest = run_filtered(str(tmp_path / "a"), batch_size=4)
  acceptance = manifest["acceptance"]
  assert acceptance["rounds"] >= 2  # round 0 alone cannot fill the budgets at ~40% acceptance
  assert [c["kept"] for c in acceptance["per_class"].values()] == [9, 5, 0, 7]
  assert all(c["met"] for c in acceptance["per_class"].values())
  index, labels, scores = read_kept(str(tmp_path / "a"))
  assert len(set(index.tolist())) == len(index) == 21 and (scores > 0.7).all()
  assert np.all(np.diff(index) > 0)
  # Another batch size gives the same bytes.
  run_filtered(str(tmp_path / "b"), batch_size=8)
  assert sweep_bytes(str(tmp_path / "b")) == sweep_bytes(str(tmp_path / "a"))
  # Stopped after the first shard of round 1, then resumed: the same bytes again.
  class StopInRound1(StopRequest):

    def __call__(self, step):
      return os.path.isdir(sweep.round_dir(str(tmp_path / "c"), 1)) and step >= 1

  with pytest.raises(Preempted):
    run_filtered(str(tmp_path / "c"), batch_size=4, stop=StopInRound1())
  assert not os.path.exists(tmp_path / "c" / "samples")
  run_filtered(str(tmp_path / "c"), batch_size=4)
  assert sweep_bytes(str(tmp_path / "c")) == sweep_bytes(str(tmp_path / "a"))


def test_filtered_sweep_stops_at_the_attempt_cap_and_reports_it(tmp_path):
  mesh = parallel.make_mesh(MESH_CFG)
  never = filters.Scorer({"name": "never"}, lambda images, labels: (
      np.zeros(len(labels), np.float32), np.zeros(len(labels), bool)), {})
  manifest = {"num_classes": 2, "image_shape": list(SHAPE), "shard_size": 4, "seed": 0,
              "run_dir": "", "checkpoint": {}, "compute_dtype": "float32", "sampler": {},
              "schedule": {}, "label_order": "interleaved", "filter": {"name": "never"}}
  out = sweep.run_filtered_sweep(fake_sampler(mesh), None, jax.random.PRNGKey(0),
                                 np.array([3, 2]), str(tmp_path), never, shard_size=4,
                                 batch_size=4, mesh=mesh, mean=0.5, std=0.5, manifest=manifest,
                                 max_attempts=3.0)
  per_class = out["acceptance"]["per_class"]
  assert [c["attempted"] for c in per_class.values()] == [9, 6]
  assert not any(c["met"] for c in per_class.values()) and out["shards"] == []


def test_filter_config_errors_name_the_key(tmp_path):
  f = filters.filter_config()
  f.name = "realism"
  with pytest.raises(ConfigError, match="sample.filter.features"):
    filters.check_filter_config(f, "sample.filter")
  f.name, f.classifier = "classifier", str(tmp_path / "missing")
  with pytest.raises(ConfigError, match="sample.filter.classifier.*does not exist"):
    filters.check_filter_config(f, "sample.filter")
  f.name = "sharpness"
  with pytest.raises(ConfigError, match="classifier, realism, realism_class"):
    filters.check_filter_config(f, "sample.filter")


def test_relative_paths_damaged_scores_and_a_class_without_real_images(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  images, labels = random_samples(20, seed=3)
  write_sweep("sweep/samples", images, labels % 3)
  real = np.random.default_rng(4).integers(0, 256, (30, 8, 8, 1), dtype=np.uint8)
  np.savez("real.npz", images=real, labels=np.arange(30) % 3)
  config = filter_config(variant="realism", input="sweep", features="pixels", real="real.npz")
  filter_sweep(config, "out")  # an input beside --workdir, given relative to the cwd
  first = sweep_bytes("out")
  # A damaged score file is scored again, and the filtered set comes out the same.
  score_file = tmp_path / "out" / "scores" / "shard-00001.npz"
  data = bytearray(score_file.read_bytes())
  data[len(data) // 2] ^= 0xFF
  score_file.write_bytes(bytes(data))
  os.remove(tmp_path / "out" / "metrics.json")
  filter_sweep(config, "out")
  assert sweep_bytes("out") == first
  # Class-based realism cannot judge class 1 when the real set has none of it.
  np.savez("real_without_1.npz", images=real[:20], labels=np.arange(20) % 2 * 2)
  with pytest.raises(DataError, match=r"class\(es\) \[1\].*filter.name=realism"):
    filter_sweep(filter_config(variant="realism_class", input="sweep", features="pixels",
                               real="real_without_1.npz"), "out_class")
  assert not os.path.exists("out_class/config.json")
