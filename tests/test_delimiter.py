"""'####' detection on token ids vs a text reference, for char and BPE tokenizers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
import transformers

from lrjax.data import DEFAULT_ALPHABET, build_char_tokenizer, delimiter_step, delimiter_tables

_CORPUS = [
    "<<7+5=12>> <<12*3=36>> #### 36", "#### 12\n", "## heading ###\n# a\n", "x####y ##### z",
    "a#b##c###d####e", "##=## >>## #>#", "the answer is #### 7", "### # ## ####\n####",
] * 20


def _train_bpe(kind: str) -> transformers.PreTrainedTokenizerFast:
  """A small BPE trained here on text full of '#' (byte-level or SentencePiece-style)."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  if kind == "bytelevel":
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
  else:  # Llama-2 style: spaces become '▁', decoding the first token drops its leading space
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    tok.decoder = tokenizers.decoders.Metaspace()
    alphabet = []
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<pad>", "<eos>"], initial_alphabet=alphabet,
      show_progress=False)
  tok.train_from_iterator(_CORPUS, trainer)
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
      clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module", params=["char", "bytelevel", "metaspace"])
def tok(request):
  if request.param == "char":
    return build_char_tokenizer(DEFAULT_ALPHABET)
  return _train_bpe(request.param)


def _count(delim: str, text: str) -> int:
  return sum(text.startswith(delim, i) for i in range(len(text)))


def _reference(tok, ids, delim):
  """completed[t] = the decoded prefix up to token t has more occurrences than up to t-1."""
  counts = [_count(delim, tok.decode(ids[:t], skip_special_tokens=False))
            for t in range(len(ids) + 1)]
  return np.array([counts[t + 1] > counts[t] for t in range(len(ids))])


@jax.jit
def _scan(tables, ids):
  """Runs delimiter_step over ids [B, T]: (completed [B, T], first-done [B, T])."""
  def step(carry, token):
    run, done = carry
    run, completed = delimiter_step(tables, run, token)
    return (run, done | completed), (completed, done | completed)
  b = ids.shape[0]
  init = (jnp.zeros(b, jnp.int32), jnp.zeros(b, bool))
  _, (completed, done) = jax.lax.scan(step, init, ids.T)
  return completed.T, done.T


def _random_ids(tok, chars, rng, batch, length):
  """Token ids biased towards tokens whose text contains delimiter characters."""
  texts = [tok.decode([i], skip_special_tokens=False) for i in range(len(tok))]
  hashy = [i for i, t in enumerate(texts) if set(t) & set(chars)]
  assert hashy
  bias = np.linspace(0.05, 0.95, batch)[:, None]  # rows from mostly-random to mostly-'#'
  pick = rng.random((batch, length)) < bias
  return np.where(pick, rng.choice(hashy, (batch, length)),
                  rng.integers(0, len(tok), (batch, length))).astype(np.int32)


@pytest.mark.parametrize("delim", ["####", "#=#"])
def test_matches_text_reference(tok, delim):
  tables = jax.tree.map(jnp.asarray, delimiter_tables(tok, delim))
  rng = np.random.default_rng(0)
  ids = _random_ids(tok, delim, rng, 48, 16)
  completed, done = map(np.asarray, _scan(tables, jnp.asarray(ids)))
  n_done = n_split = 0
  for row in range(ids.shape[0]):
    ref = _reference(tok, ids[row].tolist(), delim)
    np.testing.assert_array_equal(completed[row], ref, err_msg=repr(tok.decode(ids[row])))
    ever = np.cumsum(ref) > 0
    np.testing.assert_array_equal(done[row], ever)
    n_done += ever[-1]
    # Completions where the delimiter spans several tokens (the hard case).
    n_split += sum(delim not in tok.decode([i]) for i in ids[row][ref])
  assert n_done > 5 and n_split >= 5, (n_done, n_split)


def test_bpe_has_multi_char_hash_tokens():
  tok = _train_bpe("bytelevel")
  texts = {tok.decode([i]) for i in range(len(tok))}
  assert {"##", "###", "####", " ####"} <= texts and any("#" in t and "=" in t for t in texts)
  tables = delimiter_tables(tok)
  assert tables["next"].shape == (len(tok), 4) and tables["next"].dtype == np.int32
  # Each way of writing '####' completes exactly at its last token.
  for text in ["####", " ####", "## ##x####", "x #### 36", "#\n###", "a#b##c###d####e"]:
    ids = tok.encode(text, add_special_tokens=False)
    _, done = _scan(jax.tree.map(jnp.asarray, tables), jnp.asarray([ids], jnp.int32))
    want = [("####" in tok.decode(ids[:t + 1])) for t in range(len(ids))]
    assert list(np.asarray(done[0])) == want, (text, [tok.decode([i]) for i in ids])


def test_char_tokenizer_cases_and_padded_vocab():
  tok = build_char_tokenizer(DEFAULT_ALPHABET)
  tables = delimiter_tables(tok, vocab_size=64)  # the model's padded rows reset the state
  assert tables["next"].shape == (64, 4)
  assert not tables["completed"][len(tok):].any()

  def run(text):
    ids = jnp.asarray([tok.encode(text, add_special_tokens=False)], jnp.int32)
    return np.asarray(_scan(jax.tree.map(jnp.asarray, tables), ids)[0][0])

  assert not run("<<1+1=2>> ### # 2").any()
  assert run("a ####").tolist() == [False] * 5 + [True]
  assert run("######").tolist() == [False] * 3 + [True] * 3  # later occurrences re-fire
  run_state, completed = delimiter_step(tables, jnp.array([3, 2, 0]),
                                        jnp.array([tok.convert_tokens_to_ids("#")] * 3))
  assert run_state.tolist() == [3, 3, 1] and completed.tolist() == [True, False, False]


def test_tables_are_built_once_per_tokenizer_and_rebuilt_when_it_grows(monkeypatch):
  """Every evaluation asks for the tables: the second ask decodes nothing; a tokenizer
  that gained tokens, another delimiter or another vocab_size gets tables of its own."""
  from lrjax.data import delimiter as delim_lib
  builds = []
  build = delim_lib._build_tables
  monkeypatch.setattr(delim_lib, "_build_tables", lambda *a: builds.append(a[1:]) or build(*a))
  tok = build_char_tokenizer(DEFAULT_ALPHABET)
  first = delimiter_tables(tok)
  again = delimiter_tables(tok, "####")
  assert len(builds) == 1
  for k in ("next", "completed"):
    np.testing.assert_array_equal(again[k], build(tok, "####", None)[k])
    assert not again[k].flags.writeable  # shared: read-only
  assert again["next"] is first["next"]
  delimiter_tables(tok, "####", 64)
  delimiter_tables(tok, "##")
  assert builds == [("####", None), ("####", 64), ("##", None)]
  tok.add_tokens(["<extra>"])
  grown = delimiter_tables(tok)
  assert len(builds) == 4 and grown["next"].shape[0] == first["next"].shape[0] + 1
