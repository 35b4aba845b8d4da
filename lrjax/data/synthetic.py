r"""Built-in synthetic tasks, deterministic from `data.seed`, no downloads.

`arith` — multi-step integer arithmetic in GSM8K-Aug style. Each step names
a value; the first combines two literals, every later one the previous value
and a literal or (with `back_ref_prob`) an earlier value; the question asks
for the last one:

    prompt  'a=7+5,b=a*3,c=b-4,d=c+a,d?\n'
    cot     '<<7+5=12>> <<12*3=36>> <<36-4=32>> <<32+12=44>> #### 44'

`prosqa` — reachability in a small random DAG, ProsQA style (Hao et al.
2024). The question lists the facts 'x>y' ("every x is a y"), then asks
which of two entities the queried one reaches; the steps are the hops of the
shortest path and the answer is the reached entity:

    prompt  'f>k,w>o,m>o,f>g,k>w,f>m,c>k,m>g,h>w,h>f|c:g/o?\n'
    cot     'c>k k>w w>o #### o'

Splits: the eval set is drawn first from its own stream (so it depends on
`data.seed`, `eval_size` and the difficulty knobs only, and a smaller eval set
is a prefix of a larger one); train is drawn from another stream, skipping
any question already in eval, so the two never overlap. Generated splits are
memoised per process (same task, seed, sizes and knobs -> the same problems,
in fresh lists), so chained phases do not pay for them twice.
"""
from __future__ import annotations

import functools
import random
import string
import types
from typing import Callable

import ml_collections

from lrjax.data.tasks import TASKS, Problem, TaskData

_OPS: dict[str, Callable[[int, int], int | None]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a // b if b and a % b == 0 else None,
}
_TRIES_PER_STEP = 64
_CACHE: dict[tuple, tuple[list[Problem], list[Problem]]] = {}


def _draw(make: Callable[[random.Random], Problem | None], rng: random.Random, n: int,
          exclude: set[str], what: str) -> list[Problem]:
  """`n` problems with distinct questions, none in `exclude` (which is extended)."""
  out: list[Problem] = []
  budget = 50 * n + 1000
  while len(out) < n:
    budget -= 1
    if budget < 0:
      raise ValueError(
          f"{what}: found only {len(out)} of {n} distinct problems; the difficulty knobs "
          "allow too few different questions (raise them or lower train_size/eval_size)")
    p = make(rng)
    if p is None or p.question in exclude:
      continue
    exclude.add(p.question)
    out.append(p)
  return out


def _splits(task: str, make: Callable[[random.Random], Problem | None],
            data_cfg: ml_collections.ConfigDict) -> tuple[list[Problem], list[Problem]]:
  """Disjoint (train, eval) lists; eval depends on the seed and eval_size only."""
  key = (task, data_cfg.seed, data_cfg.train_size, data_cfg.eval_size,
         tuple(sorted(data_cfg[task].to_dict().items())))
  if key not in _CACHE:
    seen: set[str] = set()
    ev = _draw(make, random.Random(f"lrjax/{task}/eval/{data_cfg.seed}"), data_cfg.eval_size,
               seen, f"{task} eval")
    tr = _draw(make, random.Random(f"lrjax/{task}/train/{data_cfg.seed}"),
               data_cfg.train_size, seen, f"{task} train")
    _CACHE.clear()  # keep one task's problems at most
    _CACHE[key] = (tr, ev)
  tr, ev = _CACHE[key]
  return list(tr), list(ev)


# ---------------------------------------------------------------- arith


def _check_arith(c: types.SimpleNamespace) -> None:
  if not 1 <= c.min_steps <= c.max_steps:
    raise ValueError(
        f"data.arith: need 1 <= min_steps <= max_steps, got {c.min_steps}, {c.max_steps}")
  if c.max_steps > 26:
    raise ValueError(f"data.arith.max_steps={c.max_steps}: at most 26 (values are named a..z)")
  if not c.ops or set(c.ops) - set(_OPS):
    raise ValueError(f"data.arith.ops={c.ops!r}: use a non-empty subset of {''.join(_OPS)!r}")
  if c.max_operand < 1 or c.max_value < c.max_operand:
    raise ValueError("data.arith: need 1 <= max_operand <= max_value")


def arith_problem(rng: random.Random, c: types.SimpleNamespace) -> Problem | None:
  """One arithmetic problem (None when the draw hit the value bounds; draw again)."""
  rnd = rng.random  # int(rnd() * k) is a fast uniform draw from range(k)
  names = string.ascii_lowercase
  values: list[int] = []
  defs: list[str] = []
  steps: list[str] = []
  for i in range(c.min_steps + int(rnd() * (c.max_steps - c.min_steps + 1))):
    for _ in range(_TRIES_PER_STEP):
      lit = 1 + int(rnd() * c.max_operand)
      if i == 0:
        second = 1 + int(rnd() * c.max_operand)
        left, right = (str(lit), lit), (str(second), second)
      else:
        left = (names[i - 1], values[i - 1])
        if i >= 2 and rnd() < c.back_ref_prob:
          j = int(rnd() * (i - 1))
          right = (names[j], values[j])
        else:
          right = (str(lit), lit)
      if rnd() < c.swap_prob:
        left, right = right, left
      op = c.ops[int(rnd() * len(c.ops))]
      res = _OPS[op](left[1], right[1])
      if res is not None and 0 <= res <= c.max_value:
        break
    else:
      return None
    values.append(res)
    defs.append(f"{names[i]}={left[0]}{op}{right[0]}")
    steps.append(f"<<{left[1]}{op}{right[1]}={res}>>")
  question = ",".join(defs) + f",{names[len(values) - 1]}?"
  return Problem(question, tuple(steps), str(values[-1]))


@TASKS.register("arith")
def arith(data_cfg: ml_collections.ConfigDict) -> TaskData:
  """Multi-step arithmetic (GSM8K-Aug format); knobs in `data_cfg.arith`."""
  c = types.SimpleNamespace(**data_cfg.arith.to_dict())  # plain attributes: a fast inner loop
  _check_arith(c)
  train, ev = _splits("arith", lambda rng: arith_problem(rng, c), data_cfg)
  return TaskData(train, ev, "hash_exact")


# ---------------------------------------------------------------- prosqa


def _check_prosqa(c: types.SimpleNamespace) -> None:
  if not 1 <= c.min_hops <= c.max_hops:
    raise ValueError(
        f"data.prosqa: need 1 <= min_hops <= max_hops, got {c.min_hops}, {c.max_hops}")
  if not 2 * (c.max_hops + 1) <= c.num_nodes <= 26:
    raise ValueError(f"data.prosqa.num_nodes={c.num_nodes}: use 2*(max_hops+1)..26 "
                     "(two chains of max_hops hops; entities are a..z)")
  if not 2 * c.max_hops <= c.num_edges <= c.num_nodes * (c.num_nodes - 1) // 2:
    raise ValueError(f"data.prosqa.num_edges={c.num_edges}: "
                     "use 2*max_hops..num_nodes*(num_nodes-1)/2")


_FAR = 1 << 20  # "unreachable" distance


def _bfs(adj: list[list[int]], src: int) -> list[int]:
  """Hop distances from `src` along `adj` (_FAR where unreachable)."""
  dist = [_FAR] * len(adj)
  dist[src] = 0
  _relax(adj, dist, src)
  return dist


def _relax(adj: list[list[int]], dist: list[int], u: int) -> None:
  """Propagates a decreased `dist[u]` along `adj` (in place)."""
  stack = [u]
  while stack:
    u = stack.pop()
    for v in adj[u]:
      if dist[u] + 1 < dist[v]:
        dist[v] = dist[u] + 1
        stack.append(v)


def prosqa_problem(rng: random.Random, c: types.SimpleNamespace) -> Problem | None:
  """One reachability problem (None when no valid extra edges were found; draw again).

  Nodes 0..n-1 are in topological order (edges only go forward, so the graph
  is a DAG). An answer chain x -> ... -> y and a decoy chain w -> ... -> z of
  the same hop count d are laid down; random forward edges are then added up
  to `num_edges`, each kept only if z stays unreachable from x and no path
  from x to y gets shorter than d (so the chain is a shortest path).
  """
  rnd = rng.random
  n, d = c.num_nodes, c.min_hops + int(rnd() * (c.max_hops - c.min_hops + 1))
  ranks = _shuffled(rnd, range(n), 2 * (d + 1))
  chain, decoy = sorted(ranks[:d + 1]), sorted(ranks[d + 1:])
  x, y, z = chain[0], chain[-1], decoy[-1]
  edges = set(zip(chain, chain[1:])) | set(zip(decoy, decoy[1:]))
  fwd: list[list[int]] = [[] for _ in range(n)]
  bwd: list[list[int]] = [[] for _ in range(n)]
  for i, j in edges:
    fwd[i].append(j)
    bwd[j].append(i)
  from_x, to_y, to_z = _bfs(fwd, x), _bfs(bwd, y), _bfs(bwd, z)
  pairs = _pairs(n)
  for _ in range(20 * c.num_edges):
    if len(edges) >= c.num_edges:
      break
    i, j = pairs[int(rnd() * len(pairs))]
    if (i, j) in edges or (from_x[i] < _FAR and to_z[j] < _FAR) or from_x[i] + 1 + to_y[j] < d:
      continue
    edges.add((i, j))
    fwd[i].append(j)
    bwd[j].append(i)
    if from_x[i] + 1 < from_x[j]:
      from_x[j] = from_x[i] + 1
      _relax(fwd, from_x, j)
    for dist in (to_y, to_z):
      if dist[j] + 1 < dist[i]:
        dist[i] = dist[j] + 1
        _relax(bwd, dist, i)
  if len(edges) < c.num_edges:
    return None
  names = _shuffled(rnd, string.ascii_lowercase, n)
  steps = tuple(f"{names[u]}>{names[v]}" for u, v in zip(chain, chain[1:]))
  facts = _shuffled(rnd, sorted(f"{names[i]}>{names[j]}" for i, j in edges))
  a, b = (y, z) if rnd() < 0.5 else (z, y)
  question = ",".join(facts) + f"|{names[x]}:{names[a]}/{names[b]}?"
  return Problem(question, steps, names[y])


def _shuffled(rnd: Callable[[], float], items, k: int | None = None) -> list:
  """The first k items of a random permutation (Fisher-Yates on `rnd`, faster than
  random.sample for these tiny lists)."""
  pool = list(items)
  k = len(pool) if k is None else k
  for i in range(k):
    j = i + int(rnd() * (len(pool) - i))
    pool[i], pool[j] = pool[j], pool[i]
  return pool[:k]


@functools.lru_cache(maxsize=None)
def _pairs(n: int) -> tuple[tuple[int, int], ...]:
  """Every forward pair (i, j), i < j, of n nodes."""
  return tuple((i, j) for i in range(n) for j in range(i + 1, n))


@TASKS.register("prosqa")
def prosqa(data_cfg: ml_collections.ConfigDict) -> TaskData:
  """Graph reachability (ProsQA style); knobs in `data_cfg.prosqa`."""
  c = types.SimpleNamespace(**data_cfg.prosqa.to_dict())
  _check_prosqa(c)
  train, ev = _splits("prosqa", lambda rng: prosqa_problem(rng, c), data_cfg)
  return TaskData(train, ev, "hash_exact")
