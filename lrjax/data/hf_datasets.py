"""GSM8K, GSM8K-Aug and MATH from the Hugging Face Hub or from local files.

- `gsm8k`: Hub `openai/gsm8k`, config 'main'; fields question, answer (the
  reasoning lines, then '#### 72'); reward `hash_exact`.
- `gsm8k_aug`: Hub `whynlp/gsm8k-aug`; fields question, steps (a list of
  '<<48/2=24>>' strings), answer; reward `hash_exact`.
- `math`: Hub `EleutherAI/hendrycks_math`, its 7 subject configs
  concatenated; fields problem, solution (answer = the content of the last
  \\boxed{...}); reward `boxed_math`.

`data.hub_name` / `data.hub_config` override the dataset id / config;
`data.split_train` / `data.split_eval` name the splits; `data.limit` > 0 keeps
the first `limit` records of each split.

Local files (`data.path` non-empty; no network). Formats by extension:
`.jsonl` (one object per line), `.json` (an array of objects, an object
holding one such array, or JSON lines), `.parquet`. `data.path` is a
comma-separated list of items, each one of

- a directory: its files `<split>.<ext>` and shards `<split>-*.<ext>` /
  `<split>_*.<ext>` for the train and eval split names;
- `<split>=<file or glob>`: the file(s) belong to that split
  (e.g. `test=/d/math500.jsonl`, `train=/d/shards/*.parquet`);
- a file whose name is a split name or starts with one plus '.', '-' or '_'
  (`/d/train.jsonl`, `/d/test-00000-of-00001.parquet`).

A split with no file is empty (an eval-only run may give only `test=...`).
A malformed record raises `DataError` naming the file, the location (JSONL:
1-based line; JSON array / parquet / Hub: 0-based record index) and the field.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Callable, Iterator

import ml_collections

from lrjax.data.tasks import TASKS, Problem, TaskData
from lrjax.rewards import extract_boxed

FORMATS = (".jsonl", ".json", ".parquet")
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")


class DataError(ValueError):
  """A dataset file or record that cannot be read; the message says where and why."""


class _FieldError(Exception):
  """A record problem; the reader adds the file and location."""


def _field(rec: Any, name: str, kind: type | tuple[type, ...] = str) -> Any:
  if not isinstance(rec, dict):
    raise _FieldError(f"record is a {type(rec).__name__}, not an object with field {name!r}")
  if name not in rec or rec[name] is None:
    raise _FieldError(f"missing field {name!r} (fields: {', '.join(map(str, rec)) or 'none'})")
  if not isinstance(rec[name], kind):
    raise _FieldError(f"field {name!r} is a {type(rec[name]).__name__}")
  return rec[name]


def _lines(text: str) -> tuple[str, ...]:
  return tuple(line.strip() for line in text.splitlines() if line.strip())


def gsm8k_problem(rec: Any) -> Problem:
  """openai/gsm8k: the answer field holds the reasoning lines, then '#### 72'."""
  question, answer = _field(rec, "question"), _field(rec, "answer")
  if "####" not in answer:
    raise _FieldError("field 'answer' has no '#### <answer>' line")
  body, final = answer.rsplit("####", 1)
  return Problem(question.strip(), _lines(body), final.strip().replace(",", ""))


def gsm8k_aug_problem(rec: Any) -> Problem:
  """whynlp/gsm8k-aug: steps is a list of '<<48/2=24>>' strings."""
  question = _field(rec, "question")
  steps = _field(rec, "steps", (list, tuple))
  if not all(isinstance(s, str) for s in steps):
    raise _FieldError("field 'steps' must be a list of strings")
  answer = _field(rec, "answer", (str, int, float))
  return Problem(question.strip(), tuple(s.strip() for s in steps if s.strip()),
                 str(answer).strip().replace(",", ""))


def math_problem(rec: Any) -> Problem:
  """MATH: the answer is the content of the solution's last \\boxed{...}."""
  problem, solution = _field(rec, "problem"), _field(rec, "solution")
  answer = extract_boxed(solution)
  if answer is None:
    raise _FieldError("field 'solution' has no complete \\boxed{...}")
  return Problem(problem.strip(), _lines(solution), answer)


# ---------------------------------------------------------------- local files


def _records(path: str) -> Iterator[tuple[str, Any]]:
  """(location, record) pairs of one local file."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise DataError(f"{path}: unsupported format {ext!r}; use one of {', '.join(FORMATS)}")
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file")
  if ext == ".parquet":
    import pyarrow.parquet as pq  # noqa: PLC0415 - a dependency of `datasets`
    try:
      rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds
      raise DataError(f"{path}: not a readable parquet file ({e})") from e
    yield from ((f"record {i}", r) for i, r in enumerate(rows))
    return
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if ext == ".json":
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      if text.lstrip().startswith("["):
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from e
      data = None  # maybe JSON lines
    if isinstance(data, dict):
      lists = [v for v in data.values() if isinstance(v, list)]
      if len(lists) != 1:
        raise DataError(f"{path}: a JSON object must hold exactly one list of records")
      data = lists[0]
    if isinstance(data, list):
      yield from ((f"record {i}", r) for i, r in enumerate(data))
      return
  for n, line in enumerate(text.splitlines(), 1):
    if line.strip():
      try:
        yield f"line {n}", json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {n}: invalid JSON ({e.msg})") from e


def _split_of(name: str, splits: tuple[str, ...]) -> str | None:
  stem = os.path.basename(name)
  hits = [s for s in splits if stem == s or any(stem.startswith(s + c) for c in ".-_")]
  return max(hits, key=len) if hits else None


def resolve_files(path: str, splits: tuple[str, ...]) -> dict[str, list[str]]:
  """Split name -> sorted local files, from a `data.path` string (module docstring)."""
  out: dict[str, list[str]] = {s: [] for s in splits}
  for item in (p.strip() for p in path.split(",")):
    if not item:
      continue
    if os.path.isdir(item):
      for f in sorted(os.listdir(item)):
        s = _split_of(f, splits)
        if s and os.path.splitext(f)[1].lower() in FORMATS:
          out[s].append(os.path.join(item, f))
      continue
    if "=" in item and not os.path.exists(item):
      s, f = (x.strip() for x in item.split("=", 1))
      if s not in out:
        raise DataError(f"data.path item {item!r}: split {s!r} is not one of {', '.join(splits)}")
      out[s].extend(sorted(glob.glob(f)) or [f])
      continue
    s = _split_of(item, splits)
    if s is None:
      if not os.path.exists(item):
        raise DataError(f"data.path item {item!r}: no such file or directory")
      raise DataError(f"data.path item {item!r}: cannot tell its split; name it "
                      f"{'/'.join(splits)}.<ext> or write <split>={item}")
    out[s].append(item)
  if not any(out.values()):
    raise DataError(f"data.path={path!r}: no {'/'.join(splits)} files ({', '.join(FORMATS)})")
  return out


def _convert(rows: Iterator[tuple[str, Any]], source: str, make: Callable[[Any], Problem],
             limit: int) -> list[Problem]:
  out: list[Problem] = []
  for where, rec in rows:
    if limit and len(out) >= limit:
      break
    try:
      out.append(make(rec))
    except _FieldError as e:
      raise DataError(f"{source}: {where}: {e}") from None
  return out


# ---------------------------------------------------------------- the Hub


def _hub_rows(name: str, config: str | None, split: str) -> Iterator[tuple[str, Any]]:
  import datasets  # noqa: PLC0415 - slow import, only Hub tasks need it
  try:
    ds = datasets.load_dataset(name, config, split=split)
  except Exception as e:  # noqa: BLE001 - network, auth and cache errors alike
    raise DataError(f"could not load {name} ({config or 'default'})[{split}] from the Hub: "
                    f"{type(e).__name__}: {e}. Offline? Set data.path to local files.") from e
  yield from ((f"record {i}", r) for i, r in enumerate(ds))


def _load(data_cfg: ml_collections.ConfigDict, make: Callable[[Any], Problem], hub: str,
          configs: tuple[str | None, ...], reward: str) -> TaskData:
  splits = (data_cfg.split_train, data_cfg.split_eval)
  got: dict[str, list[Problem]] = {}
  if data_cfg.path:
    files = resolve_files(data_cfg.path, splits)
    for s in splits:
      got[s] = [p for f in files[s] for p in _convert(_records(f), f, make, 0)]
      got[s] = got[s][:data_cfg.limit] if data_cfg.limit else got[s]
  else:
    name = data_cfg.hub_name or hub
    configs = (data_cfg.hub_config,) if data_cfg.hub_config else configs
    for s in splits:
      got[s] = []
      for cfg in configs:
        src = f"hub:{name}" + (f"/{cfg}" if cfg else "") + f"[{s}]"
        got[s] += _convert(_hub_rows(name, cfg, s), src, make, data_cfg.limit)
      got[s] = got[s][:data_cfg.limit] if data_cfg.limit else got[s]
  return TaskData(got[splits[0]], got[splits[1]], reward)


@TASKS.register("gsm8k")
def gsm8k(data_cfg: ml_collections.ConfigDict) -> TaskData:
  """GSM8K (Cobbe et al. 2021)."""
  return _load(data_cfg, gsm8k_problem, "openai/gsm8k", ("main",), "hash_exact")


@TASKS.register("gsm8k_aug")
def gsm8k_aug(data_cfg: ml_collections.ConfigDict) -> TaskData:
  """GSM8K-Aug (Deng et al. 2023), the Coconut / Latent-GRPO training set."""
  return _load(data_cfg, gsm8k_aug_problem, "whynlp/gsm8k-aug", (None,), "hash_exact")


@TASKS.register("math")
def math_task(data_cfg: ml_collections.ConfigDict) -> TaskData:
  """MATH (Hendrycks et al. 2021); the Hub default concatenates the 7 subjects."""
  return _load(data_cfg, math_problem, "EleutherAI/hendrycks_math", MATH_SUBJECTS, "boxed_math")
