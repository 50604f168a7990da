"""SIGKILL at the instants most likely to break resume, per task: the rerun of the same command
ends exactly as an uninterrupted run (bit-identical parameters, byte-identical shards)."""

import pytest

from tests.faults import harness

# (case, kills in order on one workdir). Each kill must land (the point is reached). The other
# failpoints, and kills at random instants, are bench/faults.py's (docs/reliability.md).
KILL_CHAINS = [
    # The kill from issue #9: best of a step saved, latest not (then a half-deleted old step).
    ("train_classifier", ["point:loop.between_best_and_latest@3"]),
    ("evaluate", ["point:task.before_metrics"]),
    ("train_diffusion", ["point:checkpoint.save_in_flight@3"]),
    ("sample", ["point:shard.before_rename@2", "point:manifest.before_rename@3"]),
    # A filtered sweep killed in a top-up round, then while scoring it; the filter task while
    # scoring (its other points are bench/faults.py's).
    # Round 0 has 10 shards, so the first kill lands in round 1, the top-up round.
    ("filtered_sample", ["point:shard.before_rename@12", "point:scores.before_rename@2"]),
    ("filter", ["point:scores.before_rename@3"]),
    # The recipe: killed inside the baseline stage (before its metrics), then inside the
    # augmented stage's training (the generator and sample stages are done by then).
    ("recipe", ["point:task.before_metrics@2", "point:loop.after_checkpoint@2"]),
    # The autoencoder: killed while a checkpoint is in flight (codebook statistics, critic).
    ("train_autoencoder", ["point:checkpoint.save_in_flight@2"]),
    # Latent diffusion: killed writing the second train shard of its latent cache, then while
    # a checkpoint of the denoiser is in flight; its sweep, writing the second decoded shard.
    ("ldm", ["point:latents.before_rename@2", "point:checkpoint.save_in_flight@2"]),
    ("ldm_sample", ["point:shard.before_rename@2"]),
    # BAGAN-GP: killed while the autoencoder stage's second checkpoint is in flight, then (on
    # the rerun, which redoes it) right after the first checkpoint of the rounds.
    ("train_gan", ["point:checkpoint.save_in_flight@2", "point:loop.after_checkpoint@2"]),
    ("gan_sample", ["point:shard.before_rename@2", "point:manifest.before_rename@3"]),
    ("train_cyclegan", ["point:checkpoint.save_in_flight@2"]),
    # IOIS: killed writing epoch 2's guided shard (epoch 1's is the first), then, on the rerun,
    # right after epoch 2's classifier checkpoint (before its epoch.json).
    ("online_recipe", ["point:shard.before_rename@2", "point:loop.after_checkpoint@1"]),
]


@pytest.mark.parametrize("name, kills", KILL_CHAINS, ids=[c[0] for c in KILL_CHAINS])
def test_killed_run_resumes_to_the_uninterrupted_result(name, kills, references, inputs,
                                                         tmp_path):
  case = harness.CASES[name]
  workdir = str(tmp_path / name)
  records = harness.run_with_kills(case.args(inputs), workdir, kills)
  for record in records[:-1]:
    assert record.killed, f"{record.kill} was not reached:\n{record.stderr_tail}"
  assert records[-1].returncode == 0, records[-1].stderr_tail
  outcome = case.outcome(workdir)
  assert harness.compare(references[name][1], outcome) == []
  if name == "filtered_sample":  # the kills above hit a top-up round
    assert outcome["acceptance rounds"] >= 2
  if case.samples:
    assert harness.sample_accounting(outcome, case.samples) == {"lost": 0, "duplicated": 0,
                                                                "outside": 0}


def test_rerun_of_a_finished_run_is_a_no_op(references, inputs):
  workdir, outcome = references["train_classifier"]
  record = harness.run_once(harness.CASES["train_classifier"].args(inputs), workdir)
  assert record.returncode == 0 and "nothing to do" in record.stderr_tail
  assert harness.compare(outcome, harness.training_outcome(workdir)) == []
