"""GSM8K / GSM8K-Aug / MATH from local files (no network): formats, path forms, errors."""
import json
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lrjax.data import DataError, cot_text, default_data_config, load_task
from lrjax.data.hf_datasets import MATH_SUBJECTS, resolve_files
from lrjax.rewards import REWARDS

GSM8K = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
               "Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"},
    {"question": "Weng earns $12 an hour. How much for 50 minutes?",
     "answer": "Per minute <<12/60=0.2>>0.2.\nSo <<0.2*50=10>>10.\n#### 1,000"},
]
AUG = [{"question": "q1", "steps": ["<<48/2=24>>", "<<48+24=72>>"], "answer": "72"},
       {"question": "q2", "steps": [], "answer": 5}]
MATH = [{"problem": "What is $\\frac{1}{2}+\\frac{1}{2}$?",
         "solution": "We add.\n$\\frac{1}{2}+\\frac{1}{2} = \\boxed{1}$.", "level": "Level 1"},
        {"problem": "Simplify.", "solution": "It is $\\boxed{\\frac{\\sqrt{3}}{2}}$, "
                                             "not $\\boxed{2}$... final: $\\boxed{{x}^{2}}$"}]


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return str(path)


def _cfg(task, path, **kw):
  c = default_data_config()
  c.task, c.path = task, path
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_gsm8k_directory_of_jsonl(tmp_path):
  _write_jsonl(tmp_path / "train.jsonl", GSM8K)
  _write_jsonl(tmp_path / "test.jsonl", GSM8K[:1])
  (tmp_path / "notes.txt").write_text("ignored")
  data = load_task(_cfg("gsm8k", str(tmp_path)))
  assert (len(data.train), len(data.eval), data.reward) == (2, 1, "hash_exact")
  p = data.train[0]
  assert p.question.startswith("Natalia") and p.answer == "72"
  assert p.steps == ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.",
                     "Natalia sold 48+24 = <<48+24=72>>72 clips.")
  assert data.train[1].answer == "1000"  # commas stripped
  assert REWARDS.get(data.reward)(cot_text(p), p.answer) == 1.0


def test_gsm8k_aug_comma_list_and_explicit_splits(tmp_path):
  a = _write_jsonl(tmp_path / "train-00000.jsonl", AUG)
  b = _write_jsonl(tmp_path / "heldout.jsonl", AUG[:1])
  data = load_task(_cfg("gsm8k_aug", f"{a}, test={b}"))
  assert [p.answer for p in data.train] == ["72", "5"] and len(data.eval) == 1
  assert data.train[0].steps == ("<<48/2=24>>", "<<48+24=72>>")
  assert cot_text(data.train[0]) == "<<48/2=24>> <<48+24=72>> #### 72"
  only_eval = load_task(_cfg("gsm8k_aug", f"test={b}"))
  assert only_eval.train == [] and len(only_eval.eval) == 1
  custom = load_task(_cfg("gsm8k_aug", f"{a},validation={b}", split_eval="validation"))
  assert len(custom.eval) == 1
  limited = load_task(_cfg("gsm8k_aug", a, limit=1))
  assert len(limited.train) == 1


def test_math_json_array_and_parquet(tmp_path):
  (tmp_path / "train.json").write_text(json.dumps(MATH))
  pq.write_table(pa.Table.from_pylist(MATH), tmp_path / "test.parquet")
  data = load_task(_cfg("math", str(tmp_path)))
  assert data.reward == "boxed_math"
  assert [p.answer for p in data.train] == ["1", "{x}^{2}"]  # the last \boxed{}, nested braces
  assert [p.answer for p in data.eval] == ["1", "{x}^{2}"]
  wrapped = tmp_path / "w"
  wrapped.mkdir()
  (wrapped / "train.json").write_text(json.dumps({"data": MATH}))
  assert len(load_task(_cfg("math", str(wrapped))).train) == 2


def test_json_lines_inside_dot_json(tmp_path):
  _write_jsonl(tmp_path / "train.json", AUG)
  assert len(load_task(_cfg("gsm8k_aug", str(tmp_path / "train.json"))).train) == 2


@pytest.mark.parametrize("rows,where,field", [
    (GSM8K + [{"question": "no answer here"}], "line 3", "'answer'"),
    ([{"answer": "#### 1"}], "line 1", "'question'"),
    ([GSM8K[0], {"question": "q", "answer": "no delimiter"}], "line 2", "'answer'"),
    ([{"question": "q", "answer": 7}], "line 1", "'answer'"),
])
def test_malformed_jsonl_names_file_line_and_field(tmp_path, rows, where, field):
  path = _write_jsonl(tmp_path / "train.jsonl", rows)
  with pytest.raises(DataError) as e:
    load_task(_cfg("gsm8k", path))
  msg = str(e.value)
  assert path in msg and where in msg and field in msg, msg
  assert isinstance(e.value, ValueError)


def test_malformed_json_parquet_and_syntax(tmp_path):
  bad = [AUG[0], {"question": "q", "answer": "1"}]
  (tmp_path / "train.json").write_text(json.dumps(bad))
  with pytest.raises(DataError, match=r"train\.json: record 1: missing field 'steps'"):
    load_task(_cfg("gsm8k_aug", str(tmp_path / "train.json")))
  pq.write_table(pa.Table.from_pylist([MATH[0], {"problem": "p", "solution": None}]),
                 tmp_path / "test.parquet")
  with pytest.raises(DataError, match=r"test\.parquet: record 1: missing field 'solution'"):
    load_task(_cfg("math", str(tmp_path / "test.parquet")))
  pq.write_table(pa.Table.from_pylist([{"problem": "p", "solution": "no box"}]),
                 tmp_path / "train.parquet")
  with pytest.raises(DataError, match=r"train\.parquet: record 0: .*\\boxed"):
    load_task(_cfg("math", str(tmp_path / "train.parquet")))
  (tmp_path / "train.jsonl").write_text(json.dumps(AUG[0]) + "\n\n{not json\n")
  with pytest.raises(DataError, match=r"train\.jsonl: line 3: invalid JSON"):
    load_task(_cfg("gsm8k_aug", str(tmp_path / "train.jsonl")))
  (tmp_path / "test.json").write_text('[{"question": "q",\n "steps": [] "answer": "1"}]')
  with pytest.raises(DataError, match=r"test\.json: line 2: invalid JSON"):
    load_task(_cfg("gsm8k_aug", str(tmp_path / "test.json")))


def test_path_errors(tmp_path):
  odd = _write_jsonl(tmp_path / "mydata.jsonl", AUG)
  with pytest.raises(DataError, match="cannot tell its split"):
    resolve_files(odd, ("train", "test"))
  with pytest.raises(DataError, match="no such file"):
    resolve_files(str(tmp_path / "missing.jsonl"), ("train", "test"))
  with pytest.raises(DataError, match="not one of"):
    resolve_files(f"dev={odd}", ("train", "test"))
  with pytest.raises(DataError, match="no train/test files"):
    resolve_files(str(tmp_path), ("train", "test"))
  (tmp_path / "train.csv").write_text("question,answer\n")
  with pytest.raises(DataError, match="unsupported format"):
    load_task(_cfg("gsm8k", str(tmp_path / "train.csv")))
  got = resolve_files(f"train={odd}", ("train", "test"))
  assert got == {"train": [odd], "test": []}


def test_hub_path_with_a_fake_datasets_module(monkeypatch):
  """The Hub branch (no network): dataset ids, configs, splits, limit, error wrapping."""
  calls = []

  def load_dataset(name, config, split):
    calls.append((name, config, split))
    if name == "offline/x":
      raise ConnectionError("Couldn't reach the Hub")
    return MATH if name == "EleutherAI/hendrycks_math" else GSM8K

  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
  data = load_task(_cfg("math", ""))
  assert len(data.train) == len(data.eval) == 2 * len(MATH_SUBJECTS)
  assert calls[:2] == [("EleutherAI/hendrycks_math", "algebra", "train"),
                       ("EleutherAI/hendrycks_math", "counting_and_probability", "train")]
  calls.clear()
  data = load_task(_cfg("gsm8k", "", limit=1, split_eval="train"))
  assert calls == [("openai/gsm8k", "main", "train")] * 2 and len(data.train) == 1
  with pytest.raises(DataError, match=r"offline/x.*ConnectionError.*data\.path"):
    load_task(_cfg("gsm8k", "", hub_name="offline/x"))
  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
      load_dataset=lambda *a, **k: [{"question": "q"}]))
  with pytest.raises(DataError,
                     match=r"hub:openai/gsm8k/main\[train\]: record 0: missing field 'answer'"):
    load_task(_cfg("gsm8k", ""))
