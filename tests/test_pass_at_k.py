"""`held_out.pass_at_k` on fixed completions against two independent references: the
share of all k-subsets of the n completions that hold a correct one (enumerated), and
the unbiased estimator 1 − C(n−c, k)/C(n, k) written as Chen et al.'s (arXiv
2107.03374) NumPy product 1 − Π_{i=n−c+1..n} (1 − k/i)."""
import itertools

import numpy as np
import pytest

from lrjax.phases.held_out import pass_at_k


def _numpy_estimator(n, c, k):
  if n - c < k:
    return 1.0
  return 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64))


def test_pass_at_k_matches_subset_enumeration_and_numpy():
  rng = np.random.default_rng(0)
  correct = rng.random((6, 8)) < np.array([0.0, 0.1, 0.3, 0.5, 0.9, 1.0])[:, None]  # 6 problems
  for k in (1, 2, 3, 5, 8):
    per_problem = []
    for row in correct:
      subsets = list(itertools.combinations(range(len(row)), k))
      brute = np.mean([row[list(s)].any() for s in subsets])
      got = pass_at_k(len(row), int(row.sum()), k)
      assert got == pytest.approx(brute, abs=1e-12)
      assert got == pytest.approx(_numpy_estimator(len(row), int(row.sum()), k), abs=1e-12)
      per_problem.append(got)
    if k == 1:  # pass@1 is the share of correct samples
      np.testing.assert_allclose(per_problem, correct.mean(1), atol=1e-12)
  assert pass_at_k(8, 0, 3) == 0.0 and pass_at_k(8, 6, 3) == 1.0
  with pytest.raises(ValueError, match="pass@9 needs at least 9 samples"):
    pass_at_k(8, 2, 9)
