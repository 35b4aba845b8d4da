"""SFT sequences: hand-built expected ids and loss masks for CoT, No-CoT and Coconut."""
import chex
import numpy as np
import pytest

from lrjax.data.tasks import Problem, cot_text
from lrjax.methods.coconut.curriculum import coconut_counts
from lrjax.sft import LatentIds, build_batch, resolve_latent_ids


class CharTokenizer:
  """A stand-in for lrjax.data.tokenizer: one id per character, specials first."""
  SPECIALS = ("<pad>", "<eos>", "<bot>", "<latent>", "<eot>")

  def __init__(self, chars: str):
    self.vocab = {t: i for i, t in enumerate(self.SPECIALS)}
    for ch in chars:
      self.vocab.setdefault(ch, len(self.vocab))
    self.pad_token_id, self.eos_token_id, self.unk_token_id = 0, 1, None

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    assert not add_special_tokens
    return [self.vocab[ch] for ch in text]

  def convert_tokens_to_ids(self, token: str):
    return self.vocab.get(token)


# q=5 \n=6 a=7 ' '=8 b=9 c=10 #=11 d=12; <bot>=2 <latent>=3 <eot>=4 eos=1 pad=0
TOK = CharTokenizer("q\na bc#d")
P3 = Problem("q", ("a", "b", "c"), "d")  # prompt 'q\n', cot 'a b c #### d'
LAT = LatentIds(bot=2, latent=3, eot=4)
Q, BOT, L, EOT, EOS = [5, 6], [2], [3], [4], [1]
H4 = [11, 11, 11, 11, 8, 12]  # '#### d'


def _check_row(batch, row, expected_ids, response_start, latent_cols=()):
  """ids, mask, next-token labels, loss mask (targets = response) and latent mask of one row."""
  n, t = len(expected_ids), batch.ids.shape[1]
  ids = np.zeros(t, np.int32)
  ids[:n] = expected_ids
  np.testing.assert_array_equal(batch.ids[row], ids)
  np.testing.assert_array_equal(batch.mask[row], (np.arange(t) < n).astype(np.int32))
  np.testing.assert_array_equal(batch.labels[row], np.append(ids[1:], 0))
  want_loss = np.zeros(t, np.float32)
  want_loss[response_start - 1:n - 1] = 1  # logits at t predict ids[t + 1]
  np.testing.assert_array_equal(batch.loss_mask[row], want_loss)
  want_lat = np.zeros(t, bool)
  want_lat[list(latent_cols)] = True
  np.testing.assert_array_equal(batch.latent_mask[row], want_lat)


def test_cot_labels_on_response_including_eos():
  b = build_batch([P3], TOK, "cot", max_len=20)
  chex.assert_shape([b.ids, b.mask, b.labels, b.loss_mask, b.latent_mask], (1, 20))
  assert b.ids.dtype == np.int32 and b.labels.dtype == np.int32
  assert b.loss_mask.dtype == np.float32 and b.latent_mask.dtype == bool
  assert b.n_latent_max == 0
  cot = [7, 8, 9, 8, 10, 8] + H4  # 'a b c #### d'
  _check_row(b, 0, Q + cot + EOS, response_start=2)
  # The last target (position 13 predicts position 14) is eos.
  assert b.labels[0, 13] == TOK.eos_token_id and b.loss_mask[0, 13] == 1
  assert b.loss_mask[0].sum() == len(cot) + 1  # response tokens incl. eos


def test_nocot():
  b = build_batch([P3], TOK, "nocot", max_len=12)
  _check_row(b, 0, Q + H4 + EOS, response_start=2)


@pytest.mark.parametrize("stage, tail, n_lat", [
    (0, [7, 8, 9, 8, 10, 8] + H4, 0),  # <bot><eot> then exactly cot_text
    (1, [9, 8, 10, 8] + H4, 1),  # 'b c #### d'
    (2, [10, 8] + H4, 2),  # 'c #### d'
    (3, H4, 3),  # '#### d'
    (5, H4, 3),  # a 3-step problem has only 3 steps to replace
])
def test_coconut_stages_hand_built(stage, tail, n_lat):
  b = build_batch([P3], TOK, "coconut", stage=stage, c=1, max_len=24, latent_ids=LAT)
  head = Q + BOT + L * n_lat + EOT
  _check_row(b, 0, head + tail + EOS, response_start=len(head),
             latent_cols=range(3, 3 + n_lat))
  assert b.n_latent_max == stage  # nominal k*c: one shape per stage
  np.testing.assert_array_equal(b.bot_pos, [2])
  np.testing.assert_array_equal(b.n_latents, [n_lat])
  want = np.full(stage, -1)
  want[:n_lat] = np.arange(3, 3 + n_lat)
  np.testing.assert_array_equal(b.latent_pos[0], want)


def test_coconut_stage0_text_is_cot_text():
  b0 = build_batch([P3], TOK, "coconut", stage=0, max_len=24, latent_ids=LAT)
  cot = build_batch([P3], TOK, "cot", max_len=24)
  after_eot = b0.ids[0, 4:4 + 13]
  np.testing.assert_array_equal(after_eot, cot.ids[0, 2:2 + 13])
  assert TOK.encode(cot_text(P3)) == list(after_eot[:-1])


def test_coconut_c2_and_all_latent_stage():
  # c = 2: stage 1 puts 2 latents for the first step.
  b = build_batch([P3], TOK, "coconut", stage=1, c=2, max_len=24, latent_ids=LAT)
  _check_row(b, 0, Q + BOT + L * 2 + EOT + [9, 8, 10, 8] + H4 + EOS, 6, latent_cols=(3, 4))
  # max_latent_stage = 2: stage 3 is the all-latent stage, 2 latent steps, no text steps.
  b = build_batch([P3], TOK, "coconut", stage=3, c=1, max_len=24, latent_ids=LAT,
                  max_latent_stage=2)
  _check_row(b, 0, Q + BOT + L * 2 + EOT + H4 + EOS, 6, latent_cols=(3, 4))
  assert b.n_latent_max == 2
  assert coconut_counts(5, 3, max_latent_stage=2) == (5, 2)
  assert coconut_counts(1, 3, max_latent_stage=2) == (1, 1)
  assert coconut_counts(1, 3, max_latent_stage=2, pad_latents=True) == (1, 2)
  assert coconut_counts(1, 2, pad_latents=True) == (1, 2)


def test_mixed_rows_right_padded():
  p1 = Problem("qq", ("a",), "d")  # 1 step: at stage 2 it gets only 1 latent
  b = build_batch([P3, p1], TOK, "coconut", stage=2, max_len=20, latent_ids=LAT)
  _check_row(b, 0, Q + BOT + L * 2 + EOT + [10, 8] + H4 + EOS, 6, latent_cols=(3, 4))
  _check_row(b, 1, [5, 5, 6] + BOT + L + EOT + H4 + EOS, 6, latent_cols=(4,))
  np.testing.assert_array_equal(b.bot_pos, [2, 3])
  np.testing.assert_array_equal(b.n_latents, [2, 1])
  np.testing.assert_array_equal(b.latent_pos, [[3, 4], [4, -1]])


def test_buckets_and_too_long_error():
  b = build_batch([P3], TOK, "cot", max_len=64, pad_to_multiple=8)
  assert b.ids.shape == (1, 16)  # 15 tokens -> bucket 16
  with pytest.raises(ValueError, match=r"problem 1 is 15 tokens long"):
    build_batch([Problem("q", (), "d"), P3], TOK, "cot", max_len=12)


def test_latent_ids_resolution():
  assert resolve_latent_ids(TOK) == LAT  # from the tokenizer's vocab
  assert resolve_latent_ids(TOK, {"<bot>": 2, "<latent>": 3, "<eot>": 4}) == LAT
  assert resolve_latent_ids(TOK, (2, 3, 4)) == LAT
  plain = CharTokenizer("ab")
  plain.vocab = {k: v for k, v in plain.vocab.items() if k not in ("<bot>", "<latent>", "<eot>")}
  with pytest.raises(ValueError, match="has no"):
    resolve_latent_ids(plain)
  with pytest.raises(ValueError, match="unknown SFT mode"):
    build_batch([P3], TOK, "sft")


def test_with_the_real_char_tokenizer():
  tokenizer_mod = pytest.importorskip("lrjax.data.tokenizer")
  from lrjax.model import preset
  tok = tokenizer_mod.build_char_tokenizer(tokenizer_mod.DEFAULT_ALPHABET)
  params = {"embed": {"embedding": np.zeros((64, 4), np.float32)}}
  tok, _, _, ids = tokenizer_mod.add_latent_tokens(tok, preset("tiny"), params)
  p = Problem("a=7+5,b=a*3,b?", ("<<7+5=12>>", "<<12*3=36>>"), "36")
  for lat in (ids, None):  # the returned mapping, or looked up in the vocabulary
    b = build_batch([p], tok, "coconut", stage=1, c=2, max_len=64, latent_ids=lat)
    row = b.ids[0, :int(b.mask[0].sum())].tolist()
    bot, eot = row.index(ids["<bot>"]), row.index(ids["<eot>"])
    assert row[bot + 1:eot] == [ids["<latent>"]] * 2 and b.latent_mask[0].sum() == 2
    assert tok.decode(row[:bot]) == "a=7+5,b=a*3,b?\n"
    assert tok.decode(row[eot + 1:-1]) == cot_text(p, 1) == "<<12*3=36>> #### 36"
    assert row[-1] == tok.eos_token_id
    assert tok.decode([t for t, m in zip(b.labels[0], b.loss_mask[0]) if m]) == \
        "<<12*3=36>> #### 36<eos>"
