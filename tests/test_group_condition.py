"""Group-conditioned generators (diffusion.condition = group | class_group): the condition ids,
the per-cell and per-group budgets, a class_group run whose sweep writes `groups` with the asked
counts (read back by the synthetic source), a group run's label-free sweep, groups carried
through a filtered sweep, and the one-line error for data without groups."""

import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxsynth.data import conditions, synthetic_format
from jaxsynth.data.base import group_ids, num_groups
from jaxsynth.data.sources import open_source
from jaxsynth.data.sources.synthetic import SyntheticSource
from jaxsynth.errors import ConfigError, DataError
from jaxsynth.synthesis import filters, sweep
from jaxsynth.tasks import preflight
from jaxsynth.tasks.diffusion import train_diffusion
from jaxsynth.tasks.sample import sample
from jaxsynth.training import parallel
from tests.helpers import tiny_diffusion_config

GROUP_NAMES = ("site_a", "site_b", "site_c")
CELLS = (3, 0, 2, 1, 4, 2)   # class-major: class 0's groups a, b, c, then class 1's


def write_grouped_npz(path, groups=True):
  """2 named classes x 3 named groups, 8x8 gray; groups as (N, 2) (the group id is column 0)."""
  rng = np.random.default_rng(0)
  arrays = {"class_names": np.array(["benign", "malignant"])}
  if groups:
    arrays["group_names"] = np.array(GROUP_NAMES)
  for split, n in (("train", 48), ("val", 12), ("test", 12)):
    labels = np.arange(n) % 2
    arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    if groups:
      arrays[f"{split}_groups"] = np.stack([(np.arange(n) // 2) % 3, np.arange(n) % 5], axis=1)
  np.savez(path, **arrays)
  return str(path)


def grouped_config(path, condition, **overrides):
  return tiny_diffusion_config("dit", steps=2, data__source="npz", data__path=path,
                               diffusion__condition=condition, **overrides)


def sweep_config(run_dir, **sample_keys):
  config = tiny_diffusion_config("dit")
  config.task = "sample"
  config.sample.update(run_dir=run_dir, shard_size=5, **sample_keys)
  return config


def read_shards(workdir):
  directory = os.path.join(workdir, "samples")
  manifest = synthetic_format.read_manifest(directory)
  shards = []
  for entry in manifest["shards"]:
    with np.load(os.path.join(directory, entry["file"]), allow_pickle=False) as shard:
      shards.append({k: shard[k] for k in shard.files})
  return manifest, shards


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
  return write_grouped_npz(tmp_path_factory.mktemp("data") / "grouped.npz")


@pytest.fixture(scope="module")
def cell_run(npz_path, tmp_path_factory):
  """A finished class_group run (grids every 2 steps: a row per cell)."""
  workdir = str(tmp_path_factory.mktemp("cell_run"))
  train_diffusion(grouped_config(npz_path, "class_group", train__sample_every=2), workdir)
  return workdir


# ------------------------------------------------------------------------ ids and budgets


def test_group_ids_names_and_condition_ids(npz_path):
  data = ml_collections.ConfigDict({"source": "npz", "path": npz_path})
  train = open_source(data, "train")
  assert train.groups.shape == (48, 2) and train.group_names == GROUP_NAMES
  np.testing.assert_array_equal(group_ids(train), (np.arange(48) // 2) % 3)
  assert num_groups(train) == 3
  cells = conditions.from_source("class_group", train)
  assert (cells.num_conditions, cells.sweep_classes) == (6, 2)
  ids = conditions.condition_ids(cells, train)
  np.testing.assert_array_equal(ids, train.labels * 3 + group_ids(train))
  labels, groups = cells.split(ids)
  np.testing.assert_array_equal(labels, train.labels)
  np.testing.assert_array_equal(groups, group_ids(train))
  assert cells.names()[:2] == ["benign/site_a", "benign/site_b"]
  relabelled = conditions.conditioned(train, cells)
  assert relabelled.num_classes == 6 and relabelled[5]["label"] == ids[5]
  np.testing.assert_array_equal(relabelled[5]["image"], train[5]["image"])
  by_group = conditions.from_source("group", train)
  assert by_group.num_conditions == 3 and by_group.sweep_classes == 1
  assert by_group.split([2, 0])[0].tolist() == [0, 0]
  assert conditions.conditioned(train, conditions.from_source("class", train)) is train
  # A (N,) groups array is its own group id.
  assert group_ids(types.SimpleNamespace(groups=np.array([2, 0]))).tolist() == [2, 0]


def test_budgets_over_cells_and_groups():
  cells = conditions.Conditioning("class_group", 2, 3)
  cfg = ml_collections.ConfigDict({"budget": "counts", "class_counts": (), "group_counts": (),
                                   "cell_counts": CELLS, "per_class": 0, "total": 0,
                                   "ratio": ()})
  assert sweep.condition_budget(cfg, cells).tolist() == list(CELLS)
  cfg.cell_counts = (1, 2)
  with pytest.raises(ConfigError, match=r"sample.cell_counts.*must give 6 counts.*2 classes x "
                                        r"3 groups = 6 cells, class-major"):
    sweep.condition_budget(cfg, cells)
  cfg.budget = "balance"       # top every cell up to the largest
  assert sweep.condition_budget(cfg, cells, [4, 1, 4, 2, 3, 0]).tolist() == [0, 3, 0, 2, 1, 4]
  cfg.budget = "ratio"
  with pytest.raises(ConfigError, match="sample.budget.*ratio.*per class"):
    sweep.condition_budget(cfg, cells)
  groups = conditions.Conditioning("group", 2, 3)
  cfg.update(budget="counts", cell_counts=(), group_counts=(5, 0))
  with pytest.raises(ConfigError, match=r"sample.group_counts.*must give 3 counts"):
    sweep.condition_budget(cfg, groups)
  cfg.group_counts = (5, 0, 1)
  assert sweep.condition_budget(cfg, groups).tolist() == [5, 0, 1]
  cfg.cell_counts = CELLS      # the key of another condition is an error, not ignored
  with pytest.raises(ConfigError, match="sample.cell_counts.*give sample.group_counts"):
    sweep.condition_budget(cfg, groups)
  cfg.group_counts = ()
  with pytest.raises(ConfigError, match="sample.cell_counts.*condition=class"):
    sweep.condition_budget(cfg, conditions.Conditioning("class", 2))


# ----------------------------------------------------------------- class_group end to end


def test_class_group_run_trains_with_a_row_per_cell(cell_run):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with open(os.path.join(cell_run, "metrics.json")) as f:
    assert np.isfinite(json.load(f)["val"]["loss"])
  grid = np.asarray(Image.open(os.path.join(cell_run, "grids", "step-000002.png")))
  assert grid.shape == (6 * 8, 2 * 8, 3)   # 2 classes x 3 groups, 2 samples each


def test_class_group_sweep_writes_groups_with_the_asked_cell_counts(cell_run, tmp_path):
  workdir = str(tmp_path / "sweep")
  metrics = sample(sweep_config(cell_run, budget="counts", cell_counts=CELLS), workdir)
  assert metrics["counts"] == list(CELLS) and metrics["samples"] == 12
  manifest, shards = read_shards(workdir)
  assert manifest["condition"] == "class_group" and manifest["num_groups"] == 3
  assert manifest["group_names"] == list(GROUP_NAMES)
  assert manifest["num_classes"] == 2 and manifest["class_names"] == ["benign", "malignant"]
  assert [len(s["labels"]) for s in shards] == [5, 5, 2]
  for shard in shards:
    assert shard["groups"].dtype == np.int64 and shard["groups"].shape == shard["labels"].shape
  labels, groups, index = (np.concatenate([s[k] for s in shards])
                           for k in ("labels", "groups", "index"))
  np.testing.assert_array_equal(index, np.arange(12))
  assert np.bincount(labels * 3 + groups, minlength=6).tolist() == list(CELLS)
  # The synthetic source reads them back.
  source = SyntheticSource(workdir)
  np.testing.assert_array_equal(source.groups, groups)
  assert source.group_names == GROUP_NAMES and source.class_counts().tolist() == [5, 7]
  assert source[0]["group"] == groups[0] and group_ids(source).tolist() == groups.tolist()
  # The plan records the conditioning: a resumed sweep of it skips every finished shard.
  assert sample(sweep_config(cell_run, budget="counts", cell_counts=CELLS), workdir) == metrics
  # A budget of the wrong length is one clear line before anything is written.
  with pytest.raises(ConfigError, match="sample.cell_counts.*must give 6 counts"):
    sample(sweep_config(cell_run, budget="counts", cell_counts=(1, 2)), str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")


def test_condition_group_sweep_writes_label_zero_and_the_groups(npz_path, tmp_path):
  run = str(tmp_path / "group_run")
  train_diffusion(grouped_config(npz_path, "group", train__steps=1, train__sample_every=0,
                                 diffusion__val_batches=0), run)
  workdir = str(tmp_path / "sweep")
  sample(sweep_config(run, budget="counts", group_counts=(2, 0, 3)), workdir)
  manifest, shards = read_shards(workdir)
  assert manifest["condition"] == "group" and manifest["num_classes"] == 1
  assert "class_names" not in manifest and manifest["counts"] == [2, 0, 3]
  labels, groups = (np.concatenate([s[k] for s in shards]) for k in ("labels", "groups"))
  assert labels.tolist() == [0] * 5 and np.bincount(groups, minlength=3).tolist() == [2, 0, 3]
  config = sweep_config(run, budget="counts", group_counts=(2, 0, 3))
  config.sample.filter.update(name="classifier", classifier=str(tmp_path))
  with pytest.raises(ConfigError, match="sample.filter.name.*realism"):
    sample(config, str(tmp_path / "filtered"))
  assert not os.path.exists(tmp_path / "filtered")


# -------------------------------------------------------------------- filtered sweeps


def fake_sampler(mesh):
  """Image i is a fixed function of the global index and the condition id."""

  def draw(params, labels, index, key):
    del params, key
    grid = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
    phase = index.astype(jnp.float32)[:, None, None, None] * 0.731 + labels[:, None, None, None]
    return jnp.sin(phase + grid)

  batch = parallel.batch_sharding(mesh)
  return jax.jit(draw, in_shardings=(None, batch, batch, None), out_shardings=batch)


def test_filtered_sweep_meets_every_cell_budget_and_keeps_the_groups(tmp_path):
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1}))
  cells = conditions.Conditioning("class_group", 2, 3, ("x", "y"), GROUP_NAMES)
  scorer = filters.Scorer({"name": "test", "batch_size": 1}, lambda images, labels: (
      images[:, 0, 0, 0] / 255.0, images[:, 0, 0, 0] > 178), {"rule": "first pixel"})
  manifest = {"num_classes": 2, "image_shape": [4, 4, 1], "shard_size": 4, "seed": 0,
              "run_dir": "", "checkpoint": {}, "compute_dtype": "float32", "sampler": {},
              "schedule": {}, "label_order": "interleaved", "filter": {"name": "test"},
              "class_names": ["x", "y"], **cells.manifest()}
  out = sweep.run_filtered_sweep(fake_sampler(mesh), None, jax.random.PRNGKey(0),
                                 np.array(CELLS), str(tmp_path), scorer, shard_size=4,
                                 batch_size=4, mesh=mesh, mean=0.5, std=0.5, manifest=manifest,
                                 max_attempts=20.0, conditioning=cells)
  per_cell = out["acceptance"]["per_class"]
  assert list(per_cell) == cells.names() and all(c["met"] for c in per_cell.values())
  source = SyntheticSource(str(tmp_path / "samples"))
  cell_ids = source.labels * 3 + source.groups
  assert np.bincount(cell_ids, minlength=6).tolist() == list(CELLS)
  assert np.all(np.diff(source.index) > 0)
  # Each kept sample is the candidate of its global index, with its cell's label and group.
  for r in range(out["acceptance"]["rounds"]):
    candidates = SyntheticSource(sweep.round_dir(str(tmp_path), r))
    mine = np.isin(source.index, candidates.index)
    rows = np.searchsorted(candidates.index, source.index[mine])
    np.testing.assert_array_equal(candidates.groups[rows], source.groups[mine])
    np.testing.assert_array_equal(candidates.labels[rows], source.labels[mine])


# ---------------------------------------------------------------------- bad inputs


def test_group_condition_without_groups_is_one_line_error_before_any_write(tmp_path):
  path = write_grouped_npz(tmp_path / "plain.npz", groups=False)
  workdir = tmp_path / "run"
  config = grouped_config(path, "group")
  with pytest.raises(ConfigError) as error:
    train_diffusion(config, str(workdir))
  message = str(error.value)
  assert "\n" not in message and "diffusion.condition" in message
  assert "{split}_groups" in message and "diffusion.condition=class" in message
  assert not workdir.exists()
  with pytest.raises(ConfigError, match="diffusion.condition"):   # as main checks it
    preflight.check_inputs(config)
  with pytest.raises(ConfigError, match="diffusion.condition.*class, group, class_group"):
    train_diffusion(grouped_config(path, "groups"), str(workdir))
  assert not workdir.exists()


def test_a_group_id_outside_the_train_groups_is_a_data_error(tmp_path):
  path = tmp_path / "odd.npz"
  write_grouped_npz(path)
  with np.load(path) as npz:
    arrays = {k: npz[k] for k in npz.files if k != "group_names"}
  arrays["val_groups"][3, 0] = 7     # train has groups 0..2 only
  np.savez(path, **arrays)
  with pytest.raises(DataError, match="val_labels' row 3 has group id 7.*group_names"):
    preflight.check_inputs(grouped_config(str(path), "class_group"))
