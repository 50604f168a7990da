"""The stage pipeline: finished stages are skipped, an interrupted one resumes, reused runs are
checked and never written to, and the status line tells which is which."""

import json
import os

import ml_collections
import pytest

from jaxsynth.errors import ConfigError
from jaxsynth.recipes import pipeline
from jaxsynth.recipes.pipeline import Pipeline, Stage
from jaxsynth.training import workdir as workdir_lib


class Interrupted(Exception):
  pass


def make_config(task="count", value=1, log_every=10):
  config = ml_collections.ConfigDict()
  config.task = task
  config.value = value
  config.train = ml_collections.ConfigDict({"log_every": log_every})
  return config


def counting_task(calls, fail_once=None):
  """A task that writes config.json, a partial file, then metrics.json = value + input."""

  def run(config, directory, stop=None):
    del stop
    calls.append(directory)
    workdir_lib.prepare(directory, config, overwrite=False)
    partial = os.path.join(directory, "partial")
    done_before = os.path.exists(partial)
    open(partial, "w").close()
    if fail_once is not None and not done_before and os.path.basename(directory) == fail_once:
      raise Interrupted(directory)
    metrics = {"value": config.value, "resumed": done_before}
    workdir_lib.write_json(os.path.join(directory, workdir_lib.METRICS_FILE), metrics)
    return metrics

  return run


def snapshot(directory):
  return {os.path.relpath(os.path.join(root, name), directory):
          os.stat(os.path.join(root, name)).st_mtime_ns
          for root, dirs, files in os.walk(directory) for name in dirs + files}


def test_finished_stages_are_skipped_and_interrupted_one_resumes(tmp_path, capsys):
  calls = []
  run = counting_task(calls, fail_once="b")
  stages = lambda: [Stage("a", make_config(value=1), run), Stage("b", make_config(value=2), run),
                    Stage("c", make_config(value=3), run)]
  with pytest.raises(Interrupted):
    Pipeline("demo", str(tmp_path), stages()).run()
  assert [os.path.basename(c) for c in calls] == ["a", "b"]
  pipe = Pipeline("demo", str(tmp_path), stages())
  assert pipe.status() == {"a": "done", "b": "resume", "c": "pending"}
  results = pipe.run()
  assert [os.path.basename(c) for c in calls] == ["a", "b", "b", "c"]  # a is not run again
  assert results["a"] == {"value": 1, "resumed": False}
  assert results["b"] == {"value": 2, "resumed": True}
  assert "demo stages: a: done | b: resume | c: pending" in capsys.readouterr().out
  assert Pipeline("demo", str(tmp_path), stages()).status() == dict.fromkeys("abc", "done")
  Pipeline("demo", str(tmp_path), stages()).run()
  assert len(calls) == 4


def test_a_stage_with_another_config_is_not_complete(tmp_path):
  calls = []
  run = counting_task(calls)
  Pipeline("demo", str(tmp_path), [Stage("a", make_config(value=1), run)]).run()
  pipe = Pipeline("demo", str(tmp_path), [Stage("a", make_config(value=5), run)])
  assert pipe.status() == {"a": "resume"}  # config.json there, of another config


def test_reused_run_is_checked_and_never_written(tmp_path, capsys):
  calls = []
  run = counting_task(calls)
  other = tmp_path / "baseline"
  run(make_config(value=7, log_every=1), str(other))
  before = snapshot(other)
  workdir = tmp_path / "recipe"
  stages = [Stage("base", make_config(value=7), run, reuse=str(other), reuse_key="recipe.base"),
            Stage("next", make_config(value=8), run)]
  pipe = Pipeline("demo", str(workdir), stages)
  results = pipe.run()
  assert results["base"]["value"] == 7 and pipe.dir("base") == str(other)
  assert snapshot(other) == before
  assert len(calls) == 2  # the baseline's own run, then "next"; "base" never ran
  assert f"base: reused {other}" in capsys.readouterr().out
  assert not os.path.exists(workdir / "base")


def test_reused_run_with_other_keys_is_refused_before_anything_runs(tmp_path):
  calls = []
  run = counting_task(calls)
  other = tmp_path / "baseline"
  run(make_config(value=7), str(other))
  stages = [Stage("first", make_config(value=1), run),
            Stage("base", make_config(value=9), run, reuse=str(other), reuse_key="recipe.base")]
  with pytest.raises(ConfigError, match=r"recipe.base.*value: 7 -> 9"):
    Pipeline("demo", str(tmp_path / "recipe"), stages).run()
  assert len(calls) == 1 and not os.path.exists(tmp_path / "recipe")


def test_reused_unfinished_or_nested_run_is_refused(tmp_path):
  run = counting_task([])
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  (unfinished / "config.json").write_text(json.dumps(pipeline.resolved(make_config())))
  stage = Stage("base", make_config(), run, reuse=str(unfinished), reuse_key="recipe.base")
  with pytest.raises(ConfigError, match="holds no finished run"):
    Pipeline("demo", str(tmp_path / "recipe"), [stage]).check()
  inside = tmp_path / "recipe" / "old"
  run(make_config(), str(inside))
  stage = Stage("base", make_config(), run, reuse=str(inside), reuse_key="recipe.base")
  with pytest.raises(ConfigError, match="contain one another"):
    Pipeline("demo", str(tmp_path / "recipe"), [stage]).check()


def test_reused_run_of_another_task_is_refused(tmp_path):
  run = counting_task([])
  other = tmp_path / "other"
  run(make_config(task="sample"), str(other))
  stage = Stage("base", make_config(task="count"), run, reuse=str(other), reuse_key="k")
  with pytest.raises(ConfigError, match="is a 'sample' run"):
    Pipeline("demo", str(tmp_path / "recipe"), [stage]).check()


def test_identity_drops_free_keys_only():
  config = pipeline.resolved(make_config(log_every=3))
  assert "log_every" not in pipeline.identity(config)["train"]
  assert pipeline.identity(config)["value"] == 1
