"""Character tokenizer (round trip, save/load) and adding the latent tokens to a model."""
import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
import transformers

from lrjax.data import (DEFAULT_ALPHABET, LATENT_TOKENS, add_latent_tokens, build_char_tokenizer,
                        cot_text, default_data_config, load_task, load_tokenizer, prompt_text,
                        save_tokenizer)
from lrjax.model import init, preset


def _params(cfg, seed):
  """Random parameters with `init`'s tree and shapes (no compilation: fast)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: init(cfg, jax.random.key(0)))
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


_TOK = build_char_tokenizer(DEFAULT_ALPHABET)


@pytest.fixture(scope="module")
def tok():
  return _TOK


def test_special_ids_and_vocab_budget(tok):
  assert (tok.pad_token, tok.pad_token_id, tok.eos_token, tok.eos_token_id) == (
      "<pad>", 0, "<eos>", 1)
  assert len(tok) + len(LATENT_TOKENS) <= preset("tiny").vocab_size
  for task in ("arith", "prosqa"):
    c = default_data_config()
    c.task, c.train_size, c.eval_size = task, 300, 50
    data = load_task(c)
    used = set("".join(prompt_text(p) + cot_text(p) for p in data.train + data.eval))
    assert used <= set(DEFAULT_ALPHABET), used - set(DEFAULT_ALPHABET)


@hypothesis.settings(max_examples=100, deadline=None, derandomize=True)
@hypothesis.given(st.text(alphabet=DEFAULT_ALPHABET, max_size=80))
def test_round_trip_one_token_per_char(text):
  t = _TOK
  ids = t.encode(text, add_special_tokens=False)
  assert len(ids) == len(text)
  assert t.decode(ids) == text
  assert all(i >= 3 for i in ids)


def test_alphabet_from_texts_and_unknown_chars():
  t = build_char_tokenizer(["ab a", "b\n"])
  assert len(t) == 3 + 4  # pad, eos, unk + ' ', '\n', 'a', 'b'
  assert t.decode(t.encode("  ba\n", add_special_tokens=False)) == "  ba\n"
  assert t.encode("z", add_special_tokens=False) == [t.unk_token_id]
  ids = t("ab", add_special_tokens=False)["input_ids"] + [t.eos_token_id]
  assert t.decode(ids, skip_special_tokens=True) == "ab"


def test_save_and_load(tok, tmp_path):
  save_tokenizer(tok, str(tmp_path))
  text = "a=7+5,b=a*3,b?\n<<7+5=12>> #### 12"
  ids = tok.encode(text, add_special_tokens=False)
  for loaded in (load_tokenizer(str(tmp_path)),
                 transformers.AutoTokenizer.from_pretrained(str(tmp_path)),
                 transformers.PreTrainedTokenizerFast(
                     tokenizer_file=str(tmp_path / "tokenizer.json"))):
    assert loaded.encode(text, add_special_tokens=False) == ids
    assert loaded.decode(ids) == text
  again = load_tokenizer(str(tmp_path))
  assert (again.pad_token_id, again.eos_token_id) == (0, 1)


@pytest.mark.parametrize("tied", [True, False])
def test_add_latent_tokens_grows_tables(tied):
  tok = build_char_tokenizer(DEFAULT_ALPHABET + "ABCD")  # 67 > 64 rows with the latents
  cfg = preset("tiny").replace(tie_word_embeddings=tied)
  params = _params(cfg, 0)
  old_v = cfg.vocab_size
  tok, new_cfg, new_params, ids = add_latent_tokens(tok, cfg, params)
  assert new_cfg.vocab_size == len(tok) == 67 and new_cfg.tie_word_embeddings == tied
  assert sorted(ids) == sorted(LATENT_TOKENS) and sorted(ids.values()) == [64, 65, 66]
  assert tok.decode([ids["<bot>"], ids["<latent>"], ids["<eot>"]]) == "<bot><latent><eot>"
  src = tok.encode("<<", add_special_tokens=False)[0]
  assert src == tok.convert_tokens_to_ids("<")  # '<<' is two tokens: the first is copied
  emb, old = np.asarray(new_params["embed"]["embedding"]), np.asarray(params["embed"]["embedding"])
  assert emb.shape == (67, cfg.hidden_size)
  np.testing.assert_array_equal(emb[:old_v], old)
  for i in ids.values():
    np.testing.assert_array_equal(emb[i], old[src])
  if not tied:
    k, old_k = np.asarray(new_params["lm_head"]["kernel"]), np.asarray(params["lm_head"]["kernel"])
    assert k.shape == (cfg.hidden_size, 67)
    np.testing.assert_array_equal(k[:, :old_v], old_k)
    np.testing.assert_array_equal(k[:, ids["<eot>"]], old_k[:, src])
  else:
    assert "lm_head" not in new_params
  # The new tree has exactly the shapes `init` gives for the new config.
  want = jax.eval_shape(lambda: init(new_cfg, jax.random.key(0)))
  assert jax.tree.map(lambda a: a.shape, want) == jax.tree.map(lambda a: a.shape, new_params)
  # Calling again changes nothing.
  _, cfg2, params2, ids2 = add_latent_tokens(tok, new_cfg, new_params)
  assert cfg2 == new_cfg and ids2 == ids
  np.testing.assert_array_equal(np.asarray(params2["embed"]["embedding"]), emb)


@pytest.mark.parametrize("tied", [True, False])
def test_add_latent_tokens_uses_spare_rows(tied):
  tok = build_char_tokenizer(DEFAULT_ALPHABET)  # 60 tokens, the model has 64 rows
  cfg = preset("tiny").replace(tie_word_embeddings=tied)
  params = _params(cfg, 1)
  tok, new_cfg, new_params, ids = add_latent_tokens(tok, cfg, params, copy_from="#")
  assert new_cfg is cfg and len(tok) == 63 and sorted(ids.values()) == [60, 61, 62]
  emb, old = np.asarray(new_params["embed"]["embedding"]), np.asarray(params["embed"]["embedding"])
  assert emb.shape == old.shape
  src = tok.convert_tokens_to_ids("#")
  np.testing.assert_array_equal(emb[60:63], np.repeat(old[src][None], 3, 0))
  np.testing.assert_array_equal(emb[:60], old[:60])
  np.testing.assert_array_equal(emb[63], old[63])  # the unused spare row is untouched
  if not tied:
    k = np.asarray(new_params["lm_head"]["kernel"])
    np.testing.assert_array_equal(k[:, 61], np.asarray(params["lm_head"]["kernel"])[:, src])
  with pytest.raises(ValueError, match="no token"):
    add_latent_tokens(tok, cfg, params, copy_from="")


def test_special_ids_of_tokenizers_as_they_ship(tmp_path):
  """No pad -> a reserved pad (added here), suppressed, never an eos; every eos id of
  generation_config.json counts; pad_prompts names a missing pad."""
  import json
  import jax.numpy as jnp
  import pytest
  from lrjax.data import special
  from lrjax.latent import RuleContext
  from lrjax.model import preset
  from lrjax.rollout import pad_prompts
  tok = build_char_tokenizer("abc")
  assert special.resolve_special(tok) == special.Special(0, (1,), ())  # the tiny default
  tok = build_char_tokenizer("abc")
  tok.pad_token = tok.eos_token  # pads with its eos, as Qwen2.5 does
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 4]}))
  ids = special.resolve_special(tok, str(tmp_path))
  assert tok.convert_ids_to_tokens(ids.pad_id) == special.PAD_TOKEN
  assert ids.eos_ids == (1, 4) and ids.suppress_ids == (ids.pad_id,)
  ctx = RuleContext(model_cfg=preset("tiny"), eos_id=1, extra_eos=(4,))
  assert ctx.is_eos(jnp.asarray([1, 4, 3])).tolist() == [True, True, False]
  with pytest.raises(ValueError, match="pad id"):
    pad_prompts([[3]], 4, None)
