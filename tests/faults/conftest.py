"""Uninterrupted reference runs of every harness case, made once per test session."""

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
  """{case name: (workdir, outcome)} of uninterrupted runs, inputs before the cases that read
  them."""
  root = tmp_path_factory.mktemp("fault-references")
  out, inputs = {}, {}
  for name, case in harness.CASES.items():
    workdir = str(root / name)
    outcome, _ = harness.reference_run(case, workdir, inputs)
    inputs[name] = workdir
    out[name] = (workdir, outcome)
  return out


@pytest.fixture(scope="session")
def inputs(references):
  """{case name: workdir} of the finished reference runs (what dependent cases read)."""
  return {name: workdir for name, (workdir, _) in references.items()}
