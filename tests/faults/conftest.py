"""Uninterrupted reference runs of every harness case, made once per test session."""

import concurrent.futures

import pytest

from jaxsynth.tasks import classifier
from tests.faults import harness
from tests.helpers import tiny_config


def tiny_classifier_config():
  """The in-process classifier of the damage and disk tests: 8 steps, a checkpoint every 2."""
  return tiny_config(steps=8, train__checkpoint_every=2)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
  """The workdir of an uninterrupted in-process run of tiny_classifier_config()."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  classifier.train_and_evaluate(tiny_classifier_config(), workdir)
  return workdir


@pytest.fixture(scope="session")
def references(tmp_path_factory):
  """{case name: (workdir, outcome)} of uninterrupted runs; two at a time (the 2 cores), each
  after the cases it reads."""
  root = tmp_path_factory.mktemp("fault-references")
  out, inputs, left = {}, {}, dict(harness.CASES)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    while left:
      ready = [n for n, c in left.items() if all(d in inputs for d in c.needs)]
      runs = {n: pool.submit(harness.reference_run, left.pop(n), str(root / n), dict(inputs))
              for n in ready}
      for name, run in runs.items():
        out[name] = (str(root / name), run.result()[0])
        inputs[name] = str(root / name)
  return out


@pytest.fixture(scope="session")
def inputs(references):
  """{case name: workdir} of the finished reference runs (what dependent cases read)."""
  return {name: workdir for name, (workdir, _) in references.items()}
