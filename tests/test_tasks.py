"""Synthetic tasks: determinism, disjoint splits, correctness of every problem, formats."""
import collections
import re

import ml_collections
import pytest

from lrjax.data import (TASKS, Problem, answer_text, cot_text, default_data_config, load_task,
                        nocot_text, prompt_text, registered_tasks)
from lrjax.data import synthetic
from lrjax.rewards import hash_exact

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
        "/": lambda a, b: a // b}


def _cfg(task="arith", train=1500, eval_=300, **knobs):
  c = default_data_config()
  c.task, c.train_size, c.eval_size = task, train, eval_
  for k, v in knobs.items():
    setattr(c[task], k, v)
  return c


@pytest.fixture(scope="module")
def arith():
  return load_task(_cfg())


@pytest.fixture(scope="module")
def prosqa():
  return load_task(_cfg("prosqa"))


def solve_arith(question):
  """Independent interpreter of 'a=7+5,b=a*3,b?': (answer, step strings, references)."""
  *defs, query = question.split(",")
  env, steps, refs = {}, [], []
  for d in defs:
    name, expr = d.split("=")
    m = re.fullmatch(r"([a-z]|\d+)([-+*/])([a-z]|\d+)", expr)
    assert m, expr
    x, op, y = m.groups()
    vx, vy = (env[t] if t.isalpha() else int(t) for t in (x, y))
    if op == "/":
      assert vy and vx % vy == 0
    env[name] = _OPS[op](vx, vy)
    steps.append(f"<<{vx}{op}{vy}={env[name]}>>")
    refs.append([t for t in (x, y) if t.isalpha()])
  assert query.endswith("?")
  return env[query[:-1]], steps, refs, env


def test_default_config_fields_and_types():
  c = default_data_config()
  assert (c.task, c.seed, c.eval_size, c.path) == ("arith", 1234, 1000, "")
  assert c.train_size >= 10_000 and c.split_train == "train" and c.split_eval == "test"
  assert {"arith", "prosqa"} <= set(c.keys())
  c.lock()
  c.arith.max_steps = 6  # same type: allowed
  with pytest.raises(TypeError):
    c.arith.ops = 3
  with pytest.raises(AttributeError):
    c.not_a_field = 1


def test_registry_and_unknown_task(arith):
  assert {"arith", "prosqa", "gsm8k", "gsm8k_aug", "math"} <= set(registered_tasks())
  assert registered_tasks() == TASKS.names()
  with pytest.raises(ValueError, match="available: .*arith"):
    load_task(_cfg("nope"))
  assert arith.reward == "hash_exact"


def test_arith_problems_are_correct(arith):
  c = default_data_config().arith
  assert len(arith.train) == 1500 and len(arith.eval) == 300
  lengths = []
  for p in arith.train + arith.eval:
    answer, steps, _, env = solve_arith(p.question)
    assert p.answer == str(answer) and list(p.steps) == steps
    assert c.min_steps <= len(p.steps) <= c.max_steps
    assert all(0 <= v <= c.max_value for v in env.values())
    lengths.append(len(prompt_text(p) + cot_text(p)))
  assert 40 <= min(lengths) and max(lengths) <= 110, (min(lengths), max(lengths))
  # Not degenerate: many different answers, both step counts, every op used.
  assert len({p.answer for p in arith.train}) > 200
  assert {len(p.steps) for p in arith.train} == {3, 4}
  assert set("+-*") <= set("".join(p.question for p in arith.train))


def test_splits_disjoint_deterministic_and_eval_fixed_by_seed(arith):
  assert not {p.question for p in arith.train} & {p.question for p in arith.eval}
  assert len({p.question for p in arith.train}) == len(arith.train)
  synthetic._CACHE.clear()  # really regenerate
  again = load_task(_cfg())
  assert again.train == arith.train and again.eval == arith.eval
  again.train.pop()  # callers get their own lists (the memo is not shared state)
  assert len(load_task(_cfg()).train) == len(arith.train)
  other_train_size = load_task(_cfg(train=50, eval_=100))
  assert other_train_size.eval == arith.eval[:100]  # eval ignores train_size; prefix-stable
  c = _cfg(train=50, eval_=100)
  c.seed = 7
  assert load_task(c).eval != arith.eval[:100]


def test_arith_knobs():
  plus = load_task(_cfg(train=200, eval_=50, ops="+", min_steps=2, max_steps=2))
  assert all(set(re.sub(r"[a-z0-9=,?]", "", p.question)) == {"+"} for p in plus.train)
  assert all(len(p.steps) == 2 for p in plus.train)
  no_back = load_task(_cfg(train=300, eval_=10, back_ref_prob=0.0, min_steps=4, max_steps=4))
  always = load_task(_cfg(train=300, eval_=10, back_ref_prob=1.0, min_steps=4, max_steps=4))
  for data, expect_back in ((no_back, False), (always, True)):
    for p in data.train:
      _, _, refs, _ = solve_arith(p.question)
      for i, r in enumerate(refs[2:], 2):  # step i names value i; refs older than i-1?
        older = [t for t in r if ord(t) - ord("a") < i - 1]
        assert bool(older) == expect_back, (p.question, i)
  div = load_task(_cfg(train=200, eval_=10, ops="/*"))
  assert any("/" in p.question for p in div.train)
  for p in div.train:
    solve_arith(p.question)  # exact division only (asserted inside)


def test_too_few_distinct_problems_is_an_error():
  with pytest.raises(ValueError, match="distinct"):
    load_task(_cfg(train=5, eval_=5, ops="+", min_steps=1, max_steps=1, max_operand=1))
  with pytest.raises(ValueError, match="min_steps"):
    load_task(_cfg(min_steps=3, max_steps=2))


def _reach(question):
  facts, query = question.split("|")
  x, options = query.rstrip("?").split(":")
  adj = collections.defaultdict(list)
  for f in facts.split(","):
    a, b = f.split(">")
    adj[a].append(b)
  dist, queue = {x: 0}, [x]
  while queue:
    u = queue.pop(0)
    for v in adj[u]:
      if v not in dist:
        dist[v] = dist[u] + 1
        queue.append(v)
  return x, options.split("/"), dist, {tuple(f.split(">")) for f in facts.split(",")}


def test_prosqa_problems_are_correct(prosqa):
  c = default_data_config().prosqa
  assert prosqa.reward == "hash_exact"
  assert not {p.question for p in prosqa.train} & {p.question for p in prosqa.eval}
  for p in prosqa.train + prosqa.eval:
    x, options, dist, edges = _reach(p.question)
    assert len(edges) == c.num_edges and len(options) == 2
    assert [o for o in options if o in dist] == [p.answer]  # exactly one option reachable
    assert c.min_hops <= len(p.steps) == dist[p.answer] <= c.max_hops  # a shortest path
    hops = [tuple(s.split(">")) for s in p.steps]
    assert hops[0][0] == x and hops[-1][1] == p.answer and set(hops) <= edges
    assert all(a[1] == b[0] for a, b in zip(hops, hops[1:]))
    assert 40 <= len(prompt_text(p) + cot_text(p)) <= 90
  assert {len(p.steps) for p in prosqa.train} == {2, 3}
  answers_first = sum(p.question.split(":")[1].startswith(p.answer) for p in prosqa.train)
  assert 0.4 < answers_first / len(prosqa.train) < 0.6  # option order is not a shortcut


def test_text_formats(arith, prosqa):
  p = Problem("a=7+5,b=a*3,b?", ("<<7+5=12>>", "<<12*3=36>>"), "36")
  assert prompt_text(p) == "a=7+5,b=a*3,b?\n"
  assert cot_text(p) == "<<7+5=12>> <<12*3=36>> #### 36"
  assert cot_text(p, skip_steps=1) == "<<12*3=36>> #### 36"
  assert cot_text(p, skip_steps=2) == nocot_text(p) == "#### 36"
  assert answer_text(p) == "36"
  for q in arith.eval[:50] + prosqa.eval[:50]:
    assert cot_text(q).count("####") == 1 and "####" not in prompt_text(q)
    assert hash_exact(cot_text(q) + "<eos>", q.answer) == 1.0
    assert hash_exact(nocot_text(q), q.answer) == 1.0


def test_config_is_embeddable_and_overridable():
  root = ml_collections.ConfigDict({"data": default_data_config()})
  root.lock()
  root.data.task = "prosqa"
  root.data.prosqa.num_nodes = 10
  root.data.train_size, root.data.eval_size = 100, 20
  data = load_task(root.data)
  assert len(data.train) == 100 and all(len(set(q.question.split("|")[0]) - set(">,")) <= 10
                                        for q in data.train)
