"""Generation metrics on feature arrays (FID, KID, IS, k-NN precision/recall, density/coverage,
RBF MMD, realism scores), FID stats files, and the per-class / per-group report.

Conventions (shared by every function here):
- Features are numeric (N, D) arrays, one row per image; `real` is the reference set, `fake` the
  generated one. A bad array raises `DataError` with a one-line message saying the fix.
- Moments, kernels and scores are float64 numpy. Distances come from one jitted JAX kernel,
  sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0)), in row blocks of <= 2^24 entries (64 MB; ~256 MB live),
  float32 unless jax_enable_x64 is on and both inputs are float64; only `pairwise_distances`
  returns a full matrix. `knn_radii` is the one k-NN radius used by precision/recall,
  density/coverage and realism; a point is inside a ball when its distance is <= the radius.
"""

from __future__ import annotations

import functools
import io
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxsynth.errors import DataError
from jaxsynth.files import atomic_write

__all__ = [
    "ALL", "class_stats", "density_coverage", "feature_stats", "fid", "frechet_distance",
    "generation_metrics", "inception_score", "kid", "knn_radii", "load_stats", "mmd2_unbiased",
    "mmd_rbf", "pairwise_distances", "precision_recall", "realism_scores", "save_stats",
]

ALL = ("fid", "kid", "pr", "dc", "mmd", "is")
_BLOCK_ELEMENTS = 1 << 24  # distances per block: 64 MB in float32
_MEDIAN_POINTS = 1000  # the bandwidth heuristic of `mmd_rbf` looks at this many pooled points
_CLASS_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

# ---------------------------------------------------------------------------- validation


def _features(x, what: str, min_rows: int = 1) -> np.ndarray:
  """Returns `x` as a finite numeric (N, D) array (dtype kept), or raises DataError."""
  a = np.asarray(x)
  if a.ndim != 2 or a.shape[1] == 0:
    raise DataError(f"{what} must be a 2-D (N, D) feature array with D >= 1, got shape "
                    f"{a.shape}: reshape it to one row per sample")
  if a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
    raise DataError(f"{what} must be numeric, got dtype {a.dtype}: cast the features to float")
  if a.shape[0] < min_rows:
    raise DataError(f"{what} has {a.shape[0]} sample(s) but needs at least {min_rows}: "
                    "pass more samples")
  bad = ~np.all(np.isfinite(a), axis=1)
  if np.any(bad):
    raise DataError(f"{what} holds NaN or Inf in {int(bad.sum())} row(s) (first at index "
                    f"{int(np.flatnonzero(bad)[0])}): drop or fix those samples")
  return a


def _pair(a, b, min_rows: int = 1, names=("real", "fake")) -> tuple[np.ndarray, np.ndarray]:
  """Validates two feature arrays of the same dimension."""
  a, b = _features(a, names[0], min_rows), _features(b, names[1], min_rows)
  if a.shape[1] != b.shape[1]:
    raise DataError(f"{names[0]} and {names[1]} features differ in dimension: {a.shape[1]} vs "
                    f"{b.shape[1]}: extract both with the same feature extractor")
  return a, b


def _check_k(k, n: int | None, what: str = "") -> int:
  """Returns `k` as an int in [1, n), or raises (ValueError for k < 1, DataError for k >= n)."""
  if isinstance(k, bool) or int(k) != k or k < 1:
    raise ValueError(f"k must be an integer >= 1, got {k!r}")
  if n is not None and k >= n:
    raise DataError(f"k={k} nearest neighbours need more than {k} samples in {what}, got {n}: "
                    "lower k or pass more samples")
  return int(k)


def _real_radii(real: np.ndarray, k, real_radii) -> tuple[int, np.ndarray]:
  """(k, knn_radii(real, k)), or the passed `real_radii` (inf allowed) after a shape check."""
  if real_radii is None:
    k = _check_k(k, real.shape[0], "real")
    return k, knn_radii(real, k)
  r = np.asarray(real_radii)
  if r.shape != (real.shape[0],) or not np.issubdtype(r.dtype, np.number) or np.any(
      np.isnan(r)) or np.any(r < 0):
    raise DataError(f"real_radii must be {real.shape[0]} radii >= 0, got shape {r.shape}: "
                    "recompute them with knn_radii(real, k)")
  return _check_k(k, None), r


# ---------------------------------------------------------------------------- distances


@functools.partial(jax.jit, static_argnames="squared")
def _distance_block(a, b, b_sq, squared):
  """Euclidean (or squared) distances from each row of `a` to each row of `b`."""
  ab = jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)
  d2 = jnp.maximum(jnp.sum(a * a, axis=1)[:, None] + b_sq[None, :] - 2.0 * ab, 0.0)
  return d2 if squared else jnp.sqrt(d2)


def _distance_dtype(a: np.ndarray, b: np.ndarray):
  """float64 when JAX runs in x64 and both inputs are float64, else float32."""
  x64 = jax.config.jax_enable_x64 and a.dtype == np.float64 and b.dtype == np.float64
  return np.float64 if x64 else np.float32


def _blocks(a: np.ndarray, b: np.ndarray, chunk_size=None, squared: bool = False):
  """Yields (start, block): writable distances from a[start:start + rows] to all rows of b."""
  dtype = _distance_dtype(a, b)
  rows = min(int(chunk_size or max(1, _BLOCK_ELEMENTS // max(b.shape[0], 1))), a.shape[0])
  if rows < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
  b_dev = jnp.asarray(b.astype(dtype, copy=False))
  b_sq = jnp.sum(b_dev * b_dev, axis=1)
  for start in range(0, a.shape[0], rows):
    chunk = a[start:start + rows].astype(dtype, copy=False)
    n = chunk.shape[0]
    if n < rows:  # pad the last block so that the kernel compiles once per shape
      chunk = np.concatenate([chunk, np.zeros((rows - n, a.shape[1]), dtype)])
    block = np.array(_distance_block(jnp.asarray(chunk), b_dev, b_sq, squared=squared))
    yield start, block[:n]


def pairwise_distances(a, b, chunk_size: int | None = None) -> np.ndarray:
  """Euclidean distances (N, M) between rows of `a` and `b`, computed in row blocks."""
  a, b = _pair(a, b, names=("a", "b"))
  out = np.empty((a.shape[0], b.shape[0]), _distance_dtype(a, b))
  for start, block in _blocks(a, b, chunk_size):
    out[start:start + block.shape[0]] = block
  return out


def knn_radii(features, k: int, chunk_size: int | None = None) -> np.ndarray:
  """Distance of each row to its k-th nearest other row (self excluded), shape (N,)."""
  f = _features(features, "features")
  k = _check_k(k, f.shape[0], "features")
  radii = np.empty(f.shape[0], _distance_dtype(f, f))
  for start, block in _blocks(f, f, chunk_size):
    rows = np.arange(block.shape[0])
    block[rows, start + rows] = np.inf
    radii[start:start + rows.size] = np.partition(block, k - 1, axis=1)[:, k - 1]
  return radii


def precision_recall(real, fake, k: int = 3, real_radii=None) -> dict:
  """Improved precision, recall (Kynkäänniemi et al. 2019) and their f1.

  precision = fraction of fake rows inside the union of the real k-NN balls; recall = fraction
  of real rows inside the union of the fake ones. A passed `real_radii` must be
  `knn_radii(real, k)` with the same k (only its shape is checked).
  """
  real, fake = _pair(real, fake)
  k, r_real = _real_radii(real, k, real_radii)
  r_fake = knn_radii(fake, _check_k(k, fake.shape[0], "fake"))
  inside_fake = np.concatenate([np.any(b <= r_real, axis=1) for _, b in _blocks(fake, real)])
  inside_real = np.concatenate([np.any(b <= r_fake, axis=1) for _, b in _blocks(real, fake)])
  p, r = float(inside_fake.mean()), float(inside_real.mean())
  return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r > 0 else 0.0}


def density_coverage(real, fake, k: int = 5, real_radii=None) -> dict:
  """Density and coverage (Naeem et al. 2020), with the real radii as in `precision_recall`.

  density = sum_j sum_i 1[fake_j in B(real_i, r_i)] / (k M); coverage = fraction of real i whose
  nearest fake row lies in B(real_i, r_i).
  """
  real, fake = _pair(real, fake)
  k, r = _real_radii(real, k, real_radii)
  count, nearest = 0, np.full(real.shape[0], np.inf)
  for _, block in _blocks(fake, real):
    count += int(np.count_nonzero(block <= r))
    nearest = np.minimum(nearest, block.min(axis=0))
  return {"density": count / (k * fake.shape[0]), "coverage": float(np.mean(nearest <= r))}


def realism_scores(real, fake, k: int = 3, real_radii=None, keep_fraction: float = 1.0
                   ) -> np.ndarray:
  """Realism score of each fake row (Kynkäänniemi et al. 2019): max_r radius_k(r) / ||g - r||.

  keep_fraction=1.0 (default) is the plain equation over every real sample. The paper and its
  reference code (NVlabs, `ManifoldEstimator(..., clamp_to_percentile=50)`) first discard the real
  samples whose radius exceeds the median, "to be robust against outliers": that is
  keep_fraction=0.5 (kept: radius <= np.percentile(radii, 100 * keep_fraction)). A fake sample at
  distance 0 from a kept real one scores inf (the reference adds eps=1e-5 to the distance
  instead). A fake inside some kept real k-NN ball scores >= 1. Returns float64 (M,).
  A passed `real_radii` (e.g. knn_radii(real, k), computed once) is used as is: k is then
  ignored and the real set may have <= k rows.
  """
  if not 0.0 < keep_fraction <= 1.0:
    raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction!r}")
  real, fake = _pair(real, fake)
  _, r = _real_radii(real, k, real_radii)
  if keep_fraction < 1.0:
    keep = r <= np.percentile(r, 100.0 * keep_fraction)
    real, r = real[keep], r[keep]
  r = r.astype(np.float64)
  scores = np.empty(fake.shape[0])
  for start, block in _blocks(fake, real):
    d = block.astype(np.float64)
    ratio = np.divide(r, d, out=np.full_like(d, np.inf), where=d > 0)
    scores[start:start + d.shape[0]] = ratio.max(axis=1)
  return scores


# ------------------------------------------------------------------------ FID, KID, IS, MMD


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and covariance (D, D) of the rows, float64, ddof=1 (as pytorch-fid)."""
  f = _features(features, "features", min_rows=2).astype(np.float64)
  return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _check_stats(mu, sigma, what: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Returns (mu, sigma) as float64 of shapes (D,), (D, D) (D = dim if given), or raises."""
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != mu.shape * 2 or dim not in (None, mu.shape[0]):
    raise DataError(f"{what}: mu must have shape (D,) and sigma (D, D)"
                    f"{'' if dim is None else f' with D = {dim}'}, got {mu.shape} and "
                    f"{sigma.shape}: recompute them from features of one extractor")
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise DataError(f"{what}: mu or sigma holds NaN or Inf: recompute them with feature_stats")
  return mu, sigma


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
  """Symmetric square root of a PSD matrix; negative eigenvalues (round-off) clipped to 0."""
  w, v = np.linalg.eigh((s + s.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), via the eigenvalues of S1^½ S2 S1^½."""
  mu1, sigma1 = _check_stats(mu1, sigma1, "first stats")
  mu2, sigma2 = _check_stats(mu2, sigma2, "second stats", mu1.shape[0])
  root = _sqrtm_psd(sigma1)
  m = root @ sigma2 @ root
  tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
  diff = mu1 - mu2
  return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean, 0.0))


def fid(real_features, fake_features) -> float:
  """Fréchet distance between the Gaussians fitted to two feature sets."""
  real, fake = _pair(real_features, fake_features, min_rows=2)
  return frechet_distance(*feature_stats(real), *feature_stats(fake))


def _mmd2_from_sums(sxx: float, syy: float, sxy: float, m: int, n: int) -> float:
  """Unbiased MMD^2 from off-diagonal kernel sums within each set and the cross sum."""
  return float(sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * sxy / (m * n))


def mmd2_unbiased(kxx, kyy, kxy) -> float:
  """Unbiased MMD^2 from kernel matrices (m, m), (n, n), (m, n): diagonals of kxx, kyy left out."""
  kxx, kyy, kxy = (np.asarray(x, np.float64) for x in (kxx, kyy, kxy))
  m, n = kxx.shape[0], kyy.shape[0]
  if kxx.shape != (m, m) or kyy.shape != (n, n) or kxy.shape != (m, n) or min(m, n) < 2:
    raise DataError(f"kernel matrices must be (m, m), (n, n), (m, n) with m, n >= 2, got "
                    f"{kxx.shape}, {kyy.shape}, {kxy.shape}: pass kernels of two sets")
  return _mmd2_from_sums(kxx.sum() - np.trace(kxx), kyy.sum() - np.trace(kyy), kxy.sum(), m, n)


def _cubic_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (x.y / d + 1)^3, the KID kernel."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid(real, fake, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
        ) -> tuple[float, float]:
  """KID: mean and std (ddof=0) of unbiased cubic-kernel MMD^2 over random subsets.

  As torch-fidelity: subsets of min(subset_size, N_real, N_fake) rows drawn without replacement,
  real then fake for each subset, from np.random.default_rng(seed).
  """
  if int(num_subsets) < 1 or int(subset_size) < 2:
    raise ValueError(f"num_subsets must be >= 1 and subset_size >= 2, got {num_subsets!r}, "
                     f"{subset_size!r}")
  real, fake = _pair(real, fake, min_rows=2)
  m = min(int(subset_size), real.shape[0], fake.shape[0])
  rng = np.random.default_rng(seed)
  values = np.empty(int(num_subsets))
  for s in range(values.size):
    x = real[rng.choice(real.shape[0], m, replace=False)].astype(np.float64)
    y = fake[rng.choice(fake.shape[0], m, replace=False)].astype(np.float64)
    values[s] = mmd2_unbiased(_cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y))
  return float(values.mean()), float(values.std())


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """Inception score mean and std (ddof=0) over splits: exp(E_x KL(p(y|x) || p(y))).

  Softmax is taken inside (stably, in float64). As pytorch-fid / torch-fidelity, split s holds
  rows [s * (N // splits), (s + 1) * (N // splits)) (a remainder is dropped); splits <= N.
  """
  z = _features(logits, "logits").astype(np.float64)
  if isinstance(splits, bool) or int(splits) < 1:
    raise ValueError(f"splits must be an integer >= 1, got {splits!r}")
  splits = min(int(splits), z.shape[0])
  z = z - z.max(axis=1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  size = z.shape[0] // splits
  scores = []
  for s in range(splits):
    lp = log_p[s * size:(s + 1) * size]
    p = np.exp(lp)
    log_py = np.log(np.maximum(p.mean(axis=0), np.finfo(np.float64).tiny))
    scores.append(np.exp(np.sum(p * (lp - log_py), axis=1).mean()))
  return float(np.mean(scores)), float(np.std(scores))


def _median_distance(x: np.ndarray, y: np.ndarray) -> float:
  """Median distance between distinct pooled points (at most 1000 of them, drawn with seed 0)."""
  n = x.shape[0] + y.shape[0]
  idx = np.arange(n)
  if n > _MEDIAN_POINTS:
    idx = np.sort(np.random.default_rng(0).choice(n, _MEDIAN_POINTS, replace=False))
  pooled = np.concatenate([x[idx[idx < x.shape[0]]], y[idx[idx >= x.shape[0]] - x.shape[0]]])
  d = pairwise_distances(pooled, pooled)
  return float(np.median(d[np.triu_indices(pooled.shape[0], 1)]))


def mmd_rbf(x, y, bandwidth: float | None = None) -> float:
  """Unbiased MMD^2 with k(a, b) = exp(-||a - b||^2 / (2 bw^2)).

  bandwidth=None takes the median heuristic: the median distance between distinct points of
  the pooled sample, using at most 1000 pooled points drawn without replacement with
  np.random.default_rng(0), so the result is deterministic. Kernel sums are taken block by block.
  """
  x, y = _pair(x, y, min_rows=2, names=("x", "y"))
  bw = _median_distance(x, y) if bandwidth is None else float(bandwidth)
  if not (np.isfinite(bw) and bw > 0):
    raise DataError(f"MMD bandwidth must be finite and > 0, got {bw} (the samples may be "
                    "identical): pass bandwidth= explicitly")
  gamma = 1.0 / (2.0 * bw * bw)

  def kernel_sum(a, b, same):
    total = 0.0
    for start, block in _blocks(a, b, squared=True):
      k = np.exp(-gamma * block.astype(np.float64))
      total += k.sum() - (np.trace(k[:, start:start + k.shape[0]]) if same else 0.0)
    return total

  return _mmd2_from_sums(kernel_sum(x, x, True), kernel_sum(y, y, True), kernel_sum(x, y, False),
                         x.shape[0], y.shape[0])


# ---------------------------------------------------------------------------- stats files


def class_stats(features, labels) -> dict:
  """{class: (mu, sigma, count)} for each class with >= 2 samples (for save_stats)."""
  f = _features(features, "features")
  lab = _ids(labels, f.shape[0], "labels")
  return {c.item(): (*feature_stats(f[lab == c]), int(np.sum(lab == c)))
          for c in np.unique(lab) if np.sum(lab == c) >= 2}


def save_stats(path: str, mu, sigma, per_class=None, num_samples=None, feature_name: str = "",
               class_names=()) -> None:
  """Writes an uncompressed pytorch-fid-compatible .npz (`mu`, `sigma`, ...) atomically.

  `per_class` maps a class (int, or name of [A-Za-z0-9_.-]) to (mu, sigma, count) and is stored
  as class_<c>_mu / _sigma / _count; `num_samples` (if given) and `features` (the extractor
  name, a 0-d unicode array) and `class_names` (when given) are stored too. The bytes go to
  `path` as is (no .npz appended).
  """
  mu, sigma = _check_stats(mu, sigma, f"stats for {path}")
  arrays = {"mu": mu, "sigma": sigma, "features": np.array(str(feature_name))}
  if len(class_names):
    arrays["class_names"] = np.array([str(n) for n in class_names])
  if num_samples is not None:
    arrays["num_samples"] = np.array(int(num_samples), np.int64)
  for c, (c_mu, c_sigma, count) in (per_class or {}).items():
    name = str(c)
    if not _CLASS_NAME.match(name):
      raise DataError(f"class name {name!r} in stats for {path} must use [A-Za-z0-9_.-] only: "
                      "rename the class")
    c_mu, c_sigma = _check_stats(c_mu, c_sigma, f"class {name} stats for {path}", mu.shape[0])
    arrays.update({f"class_{name}_mu": c_mu, f"class_{name}_sigma": c_sigma,
                   f"class_{name}_count": np.array(int(count), np.int64)})
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic_write(path, buffer.getvalue())


def load_stats(path: str) -> dict:
  """Reads save_stats/pytorch-fid stats: {mu, sigma, num_samples, feature_name, per_class}.

  num_samples is None and feature_name '' when absent; per_class maps class -> (mu, sigma,
  count), with classes whose name is all digits given back as ints.
  """
  try:
    with np.load(path, allow_pickle=False) as z:
      data = {key: z[key] for key in z.files}
  except FileNotFoundError:
    raise DataError(f"stats file {path} does not exist: compute it first (save_stats)") from None
  except (OSError, ValueError, EOFError, AttributeError, TypeError) as e:
    raise DataError(f"cannot read stats file {path} as .npz ({e}): recompute it with "
                    "save_stats") from None
  if "mu" not in data or "sigma" not in data:
    raise DataError(f"stats file {path} has no 'mu' and 'sigma' arrays (keys: "
                    f"{sorted(data) or 'none'}): recompute it with save_stats")
  mu, sigma = _check_stats(data["mu"], data["sigma"], f"stats file {path}")
  per_class = {}
  for name in sorted(m.group(1) for m in map(re.compile(r"class_(.+)_mu").fullmatch, data) if m):
    if f"class_{name}_sigma" not in data or f"class_{name}_count" not in data:
      raise DataError(f"stats file {path} has class_{name}_mu but not class_{name}_sigma and "
                      f"class_{name}_count: recompute it with save_stats")
    per_class[int(name) if name.isdigit() else name] = (*_check_stats(
        data[f"class_{name}_mu"], data[f"class_{name}_sigma"], f"class {name} in stats file "
        f"{path}", mu.shape[0]), int(data[f"class_{name}_count"]))
  return {"mu": mu, "sigma": sigma, "per_class": per_class,
          "num_samples": int(data["num_samples"]) if "num_samples" in data else None,
          "feature_name": str(data["features"]) if "features" in data else "",
          "class_names": tuple(str(n) for n in data["class_names"]) if "class_names" in data
                         else ()}


# ---------------------------------------------------------------------------- the report


def _ids(x, n: int, what: str) -> np.ndarray:
  """Returns labels or groups as a (n,) array, or raises DataError."""
  a = np.asarray(x)
  if a.ndim == 2 and a.shape[1] == 1:
    a = a[:, 0]
  if a.shape != (n,):
    raise DataError(f"{what} must have one entry per feature row, shape ({n},), got {a.shape}: "
                    "pass the ids of the same samples")
  return a


def _name(names, c) -> str:
  """The display name of class or group `c`: names[c] if given, else str(c)."""
  if isinstance(names, dict):
    return str(names.get(c, c))
  if names is not None and isinstance(c, int) and 0 <= c < len(names):
    return str(names[c])
  return str(c)


def _report(real, fake, logits, which, k, kid_subsets, kid_subset_size, seed) -> dict:
  """The metrics of one real/fake pair; None (and a `note`) where the sets are too small."""
  n_real, n_fake, dim = real.shape[0], fake.shape[0], real.shape[1]
  out = {"n_real": n_real, "n_fake": n_fake, "feature_dim": dim}
  keys = {"fid": ("fid", "fid_reliable"), "kid": ("kid_mean", "kid_std"),
          "pr": ("precision", "recall", "f1"), "dc": ("density", "coverage"), "mmd": ("mmd",),
          "is": ("isc_mean", "isc_std") if logits is not None else ()}
  for family in which:
    out.update(dict.fromkeys(keys[family]))
  if min(n_real, n_fake) < 2:
    out["note"] = (f"n_real={n_real}, n_fake={n_fake}: the metrics need at least 2 samples on "
                   "each side")
    return out
  notes = []
  if "fid" in which:
    out["fid"], out["fid_reliable"] = fid(real, fake), min(n_real, n_fake) > dim
    if not out["fid_reliable"]:
      out["fid_note"] = (f"min(n_real, n_fake) = {min(n_real, n_fake)} <= feature_dim = {dim}: "
                         "the covariances are rank-deficient and FID is unreliable; use kid_mean")
  if "kid" in which:
    out["kid_mean"], out["kid_std"] = kid(real, fake, kid_subsets, kid_subset_size, seed)
  if "pr" in which or "dc" in which:
    if min(n_real, n_fake) <= k:
      notes.append(f"k-NN metrics need more than k={k} samples on each side")
    else:
      radii = knn_radii(real, k)
      if "pr" in which:
        out.update(precision_recall(real, fake, k, real_radii=radii))
      if "dc" in which:
        out.update(density_coverage(real, fake, k, real_radii=radii))
  if "mmd" in which:
    out["mmd"] = mmd_rbf(real, fake)
  if "is" in which and logits is not None:
    out["isc_mean"], out["isc_std"] = inception_score(logits)
  if notes:
    out["note"] = "; ".join(notes)
  return out


def generation_metrics(real, fake, *, real_labels=None, fake_labels=None, real_groups=None,
                       fake_groups=None, per_class=False, per_group=False, class_names=None,
                       group_names=None, inception_logits=None, k=3, kid_subsets=100,
                       kid_subset_size=1000, seed=0, which=ALL) -> dict:
  """Flat JSON-ready dict of generation metrics, overall and per class / group if asked.

  Keys: fid, fid_reliable (False when min(n_real, n_fake) <= feature_dim, with fid_note),
  kid_mean, kid_std, precision, recall, f1, density, coverage (one `k` for both, sharing the
  real radii), mmd (RBF, median bandwidth), isc_mean, isc_std (only with `inception_logits`, the
  fake set's classifier logits), n_real, n_fake, feature_dim. `which` picks the metric families
  (fid, kid, pr, dc, mmd, is); the keys of the others are left out. With per_class, the same
  keys appear as per_class.<name>.<key> for every class on either side, each equal to this
  function on that class's subset (name = class_names[c] or str(c)); a class with < 2 samples
  on a side has None values and a per_class.<name>.note. per_group likewise (per_group.<name>).
  """
  which = (which,) if isinstance(which, str) else tuple(which)
  if not set(which) <= set(ALL):
    raise ValueError(f"unknown metric families {sorted(set(which) - set(ALL))}; choose from {ALL}")
  real, fake = _pair(real, fake, min_rows=2)
  logits = None
  if inception_logits is not None and "is" in which:
    logits = _features(inception_logits, "inception_logits")
    if logits.shape[0] != fake.shape[0]:
      raise DataError(f"inception_logits has {logits.shape[0]} rows but fake has "
                      f"{fake.shape[0]}: pass the logits of the fake samples")
  opts = dict(which=which, k=k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
              seed=seed)
  out = _report(real, fake, logits, **opts)
  splits = [("per_class", per_class, real_labels, fake_labels, class_names, "labels"),
            ("per_group", per_group, real_groups, fake_groups, group_names, "groups")]
  for prefix, wanted, real_ids, fake_ids, names, what in splits:
    if not wanted:
      continue
    if real_ids is None or fake_ids is None:
      raise DataError(f"{prefix} needs real_{what} and fake_{what}: pass {what} or drop "
                      f"{prefix}")
    real_ids = _ids(real_ids, real.shape[0], f"real_{what}")
    fake_ids = _ids(fake_ids, fake.shape[0], f"fake_{what}")
    for c in np.union1d(real_ids, fake_ids):
      r_mask, f_mask = real_ids == c, fake_ids == c
      sub = _report(real[r_mask], fake[f_mask], None if logits is None else logits[f_mask],
                    **opts)
      name = _name(names, c.item())
      out.update({f"{prefix}.{name}.{key}": value for key, value in sub.items()})
  # Every value is already a Python scalar; strict JSON has no NaN or Inf.
  return {key: None if isinstance(v, float) and not np.isfinite(v) else v
          for key, v in out.items()}


if __name__ == "__main__":
  import sys  # pylint: disable=ungrouped-imports
  from jaxsynth.metrics.compare import main
  sys.exit(main())
