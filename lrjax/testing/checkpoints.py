"""HF checkpoint folders as users bring them: written by transformers (random weights) with
the real vocabulary size, special tokens, chat template and rope settings of Qwen2.5-Instruct
or Llama-3.2-Instruct, and a byte-level BPE tokenizer built with `tokenizers` in that
layout. Width and depth are reduced (tests/test_real_checkpoints.py) or, with `size=`, an
lrjax model preset's (benchmarks/rehearse.py).

    folder = real_checkpoint("qwen", "/tmp/qwen", corpus)                       # 2 layers
    folder = real_checkpoint("qwen", "/tmp/q15", corpus, size="qwen2.5-1.5b")  # 1.5B, bf16
"""
from __future__ import annotations

import json
import os

import torch
import transformers

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 151643, 151644, 151645
# Qwen2.5's template, tools left out: its own system prompt when none is given
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
    "helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                  "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eom_id|>", "<|eot_id|>", "<|python_tag|>")  # ids 128000 ...
# Llama 3.x's header layout with no date line (a fixed text: no run-time date)
LLAMA_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}")


def byte_bpe(corpus, base_vocab: int, specials, merges_vocab: int = 1500):
  """A byte-level BPE `tokenizers.Tokenizer` trained on `corpus`, its vocabulary filled
  with unused entries up to `base_vocab` ids, then `specials` at base_vocab, base_vocab+1..."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=merges_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  spec = json.loads(tok.to_str())
  vocab = spec["model"]["vocab"]
  for i in range(len(vocab), base_vocab):
    vocab[f"<|unused_{i}|>"] = i
  tok = tokenizers.Tokenizer.from_str(json.dumps(spec))
  tok.add_special_tokens(list(specials))
  return tok


def kind_of(size: str) -> str:
  """The checkpoint layout of an lrjax model preset: 'qwen' or 'llama'."""
  from lrjax.model import preset
  return "llama" if preset(size).model_type == "llama" else "qwen"


def _full_size(size: str) -> dict:
  """transformers config fields of lrjax model preset `size` (its width and depth)."""
  from lrjax.model import preset
  m = preset(size)
  return {"hidden_size": m.hidden_size, "intermediate_size": m.intermediate_size,
          "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
          "num_key_value_heads": m.num_kv_heads, "head_dim": m.head_dim}


def real_checkpoint(kind: str, path: str, corpus, seed: int = 0, size: str = "",
                    dtype: str = "") -> str:
  """An HF folder written by transformers: 'qwen' (Qwen2.5-Instruct style: tied, 12/2
  heads, rope 1e6, vocab 151936, pad <|endoftext|>, eos <|im_end|> + <|endoftext|>) or
  'llama' (Llama-3.2-Instruct style: tied, 32/8 heads, llama3 rope, no pad token, BOS
  added by the tokenizer, eos <|end_of_text|> <|eom_id|> <|eot_id|>, <think> </think>
  added). Width and depth reduced, weights N(0, 0.1) so greedy choices are clear-cut; with
  `size` (an lrjax preset of the same family) its full width and depth, weights N(0, 0.02)
  as a trained model's scale, saved in `dtype` (default bfloat16, as released)."""
  torch.manual_seed(seed)
  full = _full_size(size) if size else {}
  torch_dtype = getattr(torch, dtype or ("bfloat16" if size else "float32"))
  if kind == "qwen":
    tok = byte_bpe(corpus, 151643, QWEN_SPECIALS)
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False)
    hf_tok.chat_template = QWEN_TEMPLATE
    dims = {"hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 12, "num_key_value_heads": 2, **full}  # head_dim 4
    dims.pop("head_dim", None)  # Qwen2: hidden / heads
    cfg = transformers.Qwen2Config(
        vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
        tie_word_embeddings=True, rms_norm_eps=1e-6, bos_token_id=151643,
        eos_token_id=151645, **dims)
    model = _build(transformers.Qwen2ForCausalLM, cfg, torch_dtype)
    eos = [151645, 151643]
    gen = {"bos_token_id": 151643, "pad_token_id": 151643, "eos_token_id": eos}
  elif kind == "llama":
    tok = byte_bpe(corpus, 128000, LLAMA_SPECIALS + tuple(
        f"<|reserved_special_token_{i}|>" for i in range(3, 248)))
    tok.add_tokens(["<think>", "</think>"])  # 128256, 128257 (a Latent-SFT checkpoint's)
    from tokenizers import processors
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", 128000)])
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        clean_up_tokenization_spaces=False)
    hf_tok.chat_template = LLAMA_TEMPLATE
    dims = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 4, **full}
    cfg = transformers.LlamaConfig(
        vocab_size=128258, max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
        **dims)
    model = _build(transformers.LlamaForCausalLM, cfg, torch_dtype)
    eos = [128001, 128008, 128009]
    gen = {"bos_token_id": 128000, "eos_token_id": eos}
  else:
    raise ValueError(kind)
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim > 1:
        p.normal_(0.0, 0.02 if size else 0.1)
  model.save_pretrained(path, safe_serialization=True)
  hf_tok.save_pretrained(path)
  with open(os.path.join(path, "generation_config.json"), "w") as f:
    json.dump(gen, f)
  return path


def _build(cls, cfg, dtype):
  """`cls(cfg)` with its parameters created in `dtype` (a 1.5B model: 3 GB, not 6 in f32)."""
  default = torch.get_default_dtype()
  torch.set_default_dtype(dtype)
  try:
    return cls(cfg).eval()
  finally:
    torch.set_default_dtype(default)
