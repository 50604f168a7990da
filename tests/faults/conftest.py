"""Uninterrupted reference runs of every harness case, made once per test session."""

import pytest

from tests.faults import harness


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
