"""Top-k / top-p selection over a real vocabulary: lrjax's sort-free cuts against the
sort they replace (`jnp.sort` and `lax.top_k` lower to a full sort on CPU).

    python benchmarks/selection.py                     # [16, 128256] float32, 10 calls each
    python benchmarks/selection.py --rows 64 --vocab 151936 --calls 20

Prints compile seconds and the median milliseconds per call of each, and checks that
both keep the same tokens.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lrjax import sampling


def sorted_top_p_mask(x, p):
  """The full-sort nucleus (HF's rule, ties at the cut kept)."""
  desc = jnp.sort(x, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(desc, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs
  n_keep = jnp.maximum(jnp.sum(before < p, axis=-1, keepdims=True), 1)
  return jnp.where(x >= jnp.take_along_axis(desc, n_keep - 1, axis=-1), x, -jnp.inf)


def sorted_process(x, k, p):
  if k:
    x = jnp.where(x >= jax.lax.top_k(x, k)[0][..., -1:], x, -jnp.inf)
  return sorted_top_p_mask(x, p) if p < 1.0 else x


def timed(fn, x, calls):
  f = jax.jit(fn)
  t = time.perf_counter()
  out = f(x).block_until_ready()
  compile_s = time.perf_counter() - t
  runs = []
  for _ in range(calls):
    t = time.perf_counter()
    f(x).block_until_ready()
    runs.append(time.perf_counter() - t)
  return compile_s, 1000 * statistics.median(runs), np.isfinite(np.asarray(out))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rows", type=int, default=16)
  ap.add_argument("--vocab", type=int, default=128256)
  ap.add_argument("--calls", type=int, default=10)
  a = ap.parse_args()
  x = 3 * jax.random.normal(jax.random.key(0), (a.rows, a.vocab), jnp.float32)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, x [{a.rows}, {a.vocab}] float32")
  print(f"{'selection':<22}{'sorted: compile s':>18}{'ms/call':>9}{'lrjax: compile s':>18}"
        f"{'ms/call':>9}  same tokens")
  for k, p in ((10, 1.0), (0, 0.95), (10, 0.95), (30, 0.95)):
    c0, m0, keep0 = timed(lambda x: sorted_process(x, k, p), x, a.calls)
    c1, m1, keep1 = timed(lambda x: sampling.process_logits(x, 1.0, k, p), x, a.calls)
    print(f"{f'top-k {k}, top-p {p}':<22}{c0:>18.2f}{m0:>9.1f}{c1:>18.2f}{m1:>9.1f}  "
          f"{bool((keep0 == keep1).all())}")


if __name__ == "__main__":
  main()
