"""Generation metrics against direct numpy/scipy computations and brute-force loops."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist
from scipy.special import softmax

from jaxsynth.errors import DataError
from jaxsynth.metrics import generation as gen


def _gauss(seed: int, n: int, d: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
  """n samples of an anisotropic Gaussian (fixed mixing matrix), shifted and scaled."""
  mix = np.random.default_rng(1234).normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
  return (np.random.default_rng(seed).normal(size=(n, d)) * scale @ mix + shift).astype(
      np.float32)


def _brute_radii(x: np.ndarray, k: int) -> np.ndarray:
  """Distance to the k-th nearest other point, by sorting each row of the distance matrix."""
  d = cdist(x, x)
  return np.array([sorted(d[i, j] for j in range(len(x)) if j != i)[k - 1]
                   for i in range(len(x))])


def _brute_mmd2(x, y, kernel) -> float:
  """Unbiased MMD^2 by explicit double loops."""
  m, n = len(x), len(y)
  sxx = sum(kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  syy = sum(kernel(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
  sxy = sum(kernel(x[i], y[j]) for i in range(m) for j in range(n))
  return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)


def _cubic(a, b) -> float:
  return (float(np.dot(a.astype(np.float64), b.astype(np.float64))) / a.shape[0] + 1.0) ** 3


# ---------------------------------------------------------------------------- FID


def test_fid_matches_scipy_sqrtm():
  x, y = _gauss(0, 80, 6), _gauss(1, 60, 6, shift=0.5, scale=1.5)
  mu1, s1 = np.mean(x.astype(np.float64), 0), np.cov(x.astype(np.float64), rowvar=False)
  mu2, s2 = np.mean(y.astype(np.float64), 0), np.cov(y.astype(np.float64), rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  assert gen.fid(x, y) == pytest.approx(expected, rel=1e-8)
  mu, sigma = gen.feature_stats(x)
  assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (6, 6)
  np.testing.assert_allclose(sigma, s1)


def test_fid_zero_for_identical_sets_and_mean_shift_for_equal_covariances():
  x = _gauss(2, 50, 8)
  assert abs(gen.fid(x, x)) <= 1e-6 * np.trace(np.cov(x.astype(np.float64), rowvar=False))
  shift = np.linspace(-1.0, 2.0, 8)
  y = x.astype(np.float64) + shift
  assert gen.fid(x.astype(np.float64), y) == pytest.approx(np.sum(shift ** 2), rel=1e-6)
  mu, sigma = gen.feature_stats(x)
  assert gen.frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(
      np.sum(shift ** 2), rel=1e-9)


def test_fid_rank_deficient_is_finite():
  x, y = _gauss(3, 5, 12), _gauss(4, 6, 12, shift=1.0)
  assert np.isfinite(gen.fid(x, y)) and gen.fid(x, y) > 0


# ---------------------------------------------------------------------------- KID


def test_kid_single_full_subset_equals_brute_force():
  x, y = _gauss(5, 25, 5), _gauss(6, 25, 5, shift=0.3)
  mean, std = gen.kid(x, y, num_subsets=1, subset_size=1000)
  assert mean == pytest.approx(_brute_mmd2(x, y, _cubic), rel=1e-9, abs=1e-12)
  assert std == 0.0


def test_kid_subsets_use_the_same_rng_draws():
  x, y = _gauss(7, 30, 4), _gauss(8, 24, 4, shift=0.5)
  rng = np.random.default_rng(3)
  values = []
  for _ in range(4):
    ix = rng.choice(30, 10, replace=False)
    iy = rng.choice(24, 10, replace=False)
    values.append(_brute_mmd2(x[ix], y[iy], _cubic))
  mean, std = gen.kid(x, y, num_subsets=4, subset_size=10, seed=3)
  assert mean == pytest.approx(np.mean(values), rel=1e-9)
  assert std == pytest.approx(np.std(values), rel=1e-9)


def test_kid_is_unbiased_and_detects_a_shift():
  same = [gen.kid(_gauss(100 + i, 40, 4), _gauss(200 + i, 40, 4), 1, 40)[0] for i in range(50)]
  se = np.std(same, ddof=1) / np.sqrt(len(same))
  assert abs(np.mean(same)) < 3 * se
  diff = [gen.kid(_gauss(300 + i, 40, 4), _gauss(400 + i, 40, 4, shift=1.0), 1, 40)[0]
          for i in range(10)]
  assert np.mean(diff) > 10 * se and min(diff) > 0


def test_kid_needs_two_samples_per_side():
  with pytest.raises(DataError, match="fake has 1 sample"):
    gen.kid(_gauss(0, 5, 3), _gauss(1, 1, 3))


# ---------------------------------------------------------------------------- distances, k-NN


def test_pairwise_distances_chunked_equals_unchunked_and_cdist():
  a, b = _gauss(9, 37, 7), _gauss(10, 23, 7, shift=2.0)
  full = gen.pairwise_distances(a, b)
  chunked = gen.pairwise_distances(a, b, chunk_size=5)
  assert full.shape == (37, 23) and full.dtype == np.float32
  np.testing.assert_allclose(chunked, full, rtol=1e-6)  # XLA may round blocks differently
  np.testing.assert_allclose(full, cdist(a, b), rtol=1e-5, atol=1e-5)


def test_knn_radii_equal_brute_force():
  x = _gauss(11, 40, 5)
  for k in (1, 3, 7):
    np.testing.assert_allclose(gen.knn_radii(x, k, chunk_size=6), _brute_radii(x, k),
                               rtol=1e-5)
  with pytest.raises(DataError, match="k=40"):
    gen.knn_radii(x, 40)


def test_precision_recall_equal_brute_force():
  real, fake = _gauss(12, 50, 6), _gauss(13, 40, 6, shift=0.7, scale=0.8)
  k = 3
  rr, rf, d = _brute_radii(real, k), _brute_radii(fake, k), cdist(fake, real)
  precision = np.mean([any(d[j, i] <= rr[i] for i in range(50)) for j in range(40)])
  recall = np.mean([any(d[j, i] <= rf[j] for j in range(40)) for i in range(50)])
  got = gen.precision_recall(real, fake, k)
  assert got["precision"] == pytest.approx(precision) and got["recall"] == pytest.approx(recall)
  assert 0 < precision < 1 and 0 < recall < 1
  assert got["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
  assert gen.precision_recall(real, fake, k, real_radii=gen.knn_radii(real, k)) == got
  far = gen.precision_recall(real, fake + 100.0, k)
  assert far == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_density_coverage_equal_brute_force():
  real, fake = _gauss(14, 45, 5), _gauss(15, 35, 5, shift=0.5)
  k = 5
  rr, d = _brute_radii(real, k), cdist(fake, real)
  density = sum(d[j, i] <= rr[i] for j in range(35) for i in range(45)) / (k * 35)
  coverage = np.mean([min(d[:, i]) <= rr[i] for i in range(45)])
  got = gen.density_coverage(real, fake, k)
  assert got["density"] == pytest.approx(density) and got["coverage"] == pytest.approx(coverage)
  assert 0 < coverage < 1
  with pytest.raises(DataError, match="real_radii"):
    gen.density_coverage(real, fake, k, real_radii=np.ones(3))


# ---------------------------------------------------------------------------- realism


def test_realism_scores_equal_brute_force_with_and_without_pruning():
  real, fake = _gauss(16, 40, 4), _gauss(17, 25, 4, shift=0.4)
  radii, d = _brute_radii(real, 3), cdist(fake, real)
  plain = [max(radii[i] / d[j, i] for i in range(40)) for j in range(25)]
  scores = gen.realism_scores(real, fake, k=3)
  assert scores.dtype == np.float64 and scores.shape == (25,)
  np.testing.assert_allclose(scores, plain, rtol=1e-5)
  keep = [i for i in range(40) if radii[i] <= np.median(radii)]
  pruned = [max(radii[i] / d[j, i] for i in keep) for j in range(25)]
  np.testing.assert_allclose(gen.realism_scores(real, fake, k=3, keep_fraction=0.5), pruned,
                             rtol=1e-5)


def test_realism_at_least_one_inside_a_ball_and_inf_at_a_real_point():
  real = _gauss(18, 30, 6)
  radii = gen.knn_radii(real, 3)
  direction = np.ones(6, np.float32) / np.sqrt(6)
  inside = real[:10] + 0.5 * radii[:10, None] * direction
  assert np.all(gen.realism_scores(real, inside, k=3, real_radii=radii) >= 1.0)
  # R >= 1 exactly where precision counts a fake as inside the real manifold.
  fake = _gauss(19, 60, 6, shift=0.8)
  scores = gen.realism_scores(real, fake, k=3)
  assert np.mean(scores >= 1.0) == gen.precision_recall(real, fake, 3)["precision"]
  # Integer-valued features make every distance exact: a copy of a real point is at 0 -> inf.
  grid = np.random.default_rng(0).integers(-3, 4, size=(20, 4)).astype(np.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    at_point = gen.realism_scores(grid, grid[:3] + 0.0, k=2)
  assert np.all(np.isinf(at_point))


# ---------------------------------------------------------------------------- IS, MMD


def test_inception_score_equals_brute_force_and_is_one_for_uniform_logits():
  logits = np.random.default_rng(20).normal(size=(103, 7)) * 3
  p = softmax(logits, axis=1)
  size = 103 // 4
  per_split = []
  for s in range(4):
    part = p[s * size:(s + 1) * size]
    py = part.mean(axis=0)
    per_split.append(np.exp(np.mean([np.sum(q * np.log(q / py)) for q in part])))
  mean, std = gen.inception_score(logits, splits=4)
  assert mean == pytest.approx(np.mean(per_split), rel=1e-10)
  assert std == pytest.approx(np.std(per_split), rel=1e-8)
  assert gen.inception_score(np.zeros((20, 5)), splits=3) == pytest.approx((1.0, 0.0))
  assert gen.inception_score(logits[:3], splits=10)[0] >= 1.0  # splits capped at N


def test_mmd_rbf_equals_brute_force_and_is_centred_for_one_distribution():
  x, y = _gauss(21, 20, 4), _gauss(22, 15, 4, shift=0.6)
  bw = 1.7
  rbf = lambda a, b: np.exp(-np.sum((a.astype(np.float64) - b) ** 2) / (2 * bw ** 2))
  assert gen.mmd_rbf(x, y, bandwidth=bw) == pytest.approx(_brute_mmd2(x, y, rbf), rel=1e-5)
  pooled = np.concatenate([x, y])
  median = np.median(cdist(pooled, pooled)[np.triu_indices(35, 1)])
  assert gen.mmd_rbf(x, y) == pytest.approx(gen.mmd_rbf(x, y, bandwidth=median), rel=1e-4)
  same = [gen.mmd_rbf(_gauss(500 + i, 30, 4), _gauss(600 + i, 30, 4)) for i in range(30)]
  assert abs(np.mean(same)) < 3 * np.std(same, ddof=1) / np.sqrt(30)
  assert gen.mmd_rbf(x, _gauss(23, 15, 4, shift=2.0)) > 0.1


def test_mmd2_unbiased_rejects_inconsistent_kernels():
  with pytest.raises(DataError, match="kernel matrices"):
    gen.mmd2_unbiased(np.ones((3, 3)), np.ones((2, 2)), np.ones((2, 3)))


# ---------------------------------------------------------------------------- the report


def _labelled(seed: int, n: int, d: int, shift: float):
  """Features with 3 classes, each class shifted differently."""
  labels = np.arange(n) % 3
  return _gauss(seed, n, d, shift=shift) + labels[:, None].astype(np.float32), labels


def test_generation_metrics_overall_keys_and_per_class_equal_subset_metrics():
  real, rl = _labelled(30, 90, 4, 0.0)
  fake, fl = _labelled(31, 60, 4, 0.3)
  logits = np.random.default_rng(32).normal(size=(60, 3))
  kw = dict(kid_subsets=5, kid_subset_size=20, inception_logits=logits)
  out = gen.generation_metrics(real, fake, real_labels=rl, fake_labels=fl, per_class=True,
                               class_names=["a", "b", "c"], **kw)
  json.dumps(out, allow_nan=False)
  overall = {"fid", "fid_reliable", "kid_mean", "kid_std", "precision", "recall", "f1",
             "density", "coverage", "mmd", "n_real", "n_fake", "feature_dim", "isc_mean",
             "isc_std"}
  assert overall <= set(out) and out["fid_reliable"] is True and "fid_note" not in out
  assert (out["n_real"], out["n_fake"], out["feature_dim"]) == (90, 60, 4)
  assert out["fid"] == gen.fid(real, fake)
  assert out["kid_mean"] == gen.kid(real, fake, 5, 20)[0]
  for c, name in enumerate("abc"):
    sub = gen.generation_metrics(real[rl == c], fake[fl == c], **{
        **kw, "inception_logits": logits[fl == c]})
    for key, value in sub.items():
      assert out[f"per_class.{name}.{key}"] == value, (name, key)


def test_per_group_and_class_missing_on_one_side():
  real, rl = _labelled(33, 60, 4, 0.0)
  fake, fl = _labelled(34, 40, 4, 0.2)
  fl = np.where(fl == 2, 0, fl)  # class 2 has no fake samples
  fl[0] = 5  # class 5 has one fake sample and no real ones
  groups_r, groups_f = np.array(["x", "y"] * 30), np.array(["x", "y"] * 20)
  out = gen.generation_metrics(real, fake, real_labels=rl, fake_labels=fl, real_groups=groups_r,
                               fake_groups=groups_f, per_class=True, per_group=True,
                               kid_subsets=3, which=("fid", "kid", "pr"))
  assert out["per_class.2.fid"] is None and out["per_class.2.n_fake"] == 0
  assert "2 samples" in out["per_class.2.note"] and out["per_class.5.n_real"] == 0
  assert out["per_class.0.fid"] is not None and "per_class.0.mmd" not in out
  sub = gen.generation_metrics(real[groups_r == "y"], fake[groups_f == "y"], kid_subsets=3,
                               which=("fid", "kid", "pr"))
  assert all(out[f"per_group.y.{key}"] == value for key, value in sub.items())
  with pytest.raises(DataError, match="pass labels or drop per_class"):
    gen.generation_metrics(real, fake, per_class=True)


def test_fid_unreliable_when_samples_do_not_exceed_dimension():
  out = gen.generation_metrics(_gauss(35, 12, 12), _gauss(36, 30, 12), which=("fid",))
  assert out["fid_reliable"] is False and "kid" in out["fid_note"]
  assert set(out) == {"fid", "fid_reliable", "fid_note", "n_real", "n_fake", "feature_dim"}


def test_bad_arrays_raise_data_error():
  x = _gauss(37, 10, 3)
  with pytest.raises(DataError, match="differ in dimension"):
    gen.fid(x, _gauss(38, 10, 4))
  bad = x.copy()
  bad[4, 1] = np.nan
  with pytest.raises(DataError, match="index 4"):
    gen.precision_recall(x, bad)
  with pytest.raises(DataError, match="2-D"):
    gen.knn_radii(np.ones(5), 1)


# ---------------------------------------------------------------------------- stats files


def test_save_load_stats_round_trip(tmp_path):
  x, labels = _labelled(39, 40, 5, 0.0)
  mu, sigma = gen.feature_stats(x)
  per_class = gen.class_stats(x, labels)
  path = str(tmp_path / "stats.npz")
  gen.save_stats(path, mu, sigma, per_class=per_class, num_samples=40, feature_name="inception")
  raw = np.load(path, allow_pickle=False)  # pytorch-fid reads exactly these two keys
  np.testing.assert_array_equal(raw["mu"], mu)
  np.testing.assert_array_equal(raw["sigma"], sigma)
  assert {"class_0_mu", "class_2_sigma", "class_1_count", "num_samples", "features"} <= set(
      raw.files)
  loaded = gen.load_stats(path)
  assert loaded["num_samples"] == 40 and loaded["feature_name"] == "inception"
  assert sorted(loaded["per_class"]) == [0, 1, 2]
  for c, (c_mu, c_sigma, count) in per_class.items():
    np.testing.assert_array_equal(loaded["per_class"][c][0], c_mu)
    np.testing.assert_array_equal(loaded["per_class"][c][1], c_sigma)
    assert loaded["per_class"][c][2] == count == np.sum(labels == c)


def test_load_stats_errors_name_the_file(tmp_path):
  path = str(tmp_path / "nomu.npz")
  np.savez(path, sigma=np.eye(3))
  with pytest.raises(DataError, match="nomu.npz.*'mu'"):
    gen.load_stats(path)
  with pytest.raises(DataError, match="missing.npz"):
    gen.load_stats(str(tmp_path / "missing.npz"))
  bad = str(tmp_path / "bad.npz")
  np.savez(bad, mu=np.zeros(3), sigma=np.eye(4))
  with pytest.raises(DataError, match="bad.npz"):
    gen.load_stats(bad)


def test_realism_with_precomputed_radii_accepts_a_small_real_set():
  real, fake = _gauss(40, 2, 3), _gauss(41, 5, 3)
  d = cdist(fake, real)
  radii = np.array([0.5, 0.0])  # a caller may mark a real row without a usable radius as 0
  np.testing.assert_allclose(gen.realism_scores(real, fake, real_radii=radii), 0.5 / d[:, 0],
                             rtol=1e-5)
  assert np.all(np.isinf(gen.realism_scores(real, fake, real_radii=np.array([1.0, np.inf]))))
  with pytest.raises(DataError, match="real_radii"):
    gen.realism_scores(real, fake, real_radii=np.array([0.0, np.nan]))
