"""Tiny random transformers models saved to local folders (no Hub access)."""
from __future__ import annotations

import numpy as np
import torch
import transformers


def tiny_hf_config(model_type: str, **overrides):
  """A small Qwen2 (tied, q/k/v bias) or Llama (untied, llama3 RoPE) config."""
  common = dict(vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-6)
  if model_type == "qwen2":
    cfg = transformers.Qwen2Config(**{**common, "tie_word_embeddings": True,
                                      "rope_theta": 10000.0, **overrides})
  elif model_type == "llama":
    cfg = transformers.LlamaConfig(**{
        **common, "tie_word_embeddings": False, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        **overrides})
  else:
    raise ValueError(model_type)
  return cfg


def make_hf_model(model_type: str, seed: int = 0, **overrides):
  """A random model in float32; weights widened from N(0, 0.02) so logits differ visibly."""
  torch.manual_seed(seed)
  cfg = tiny_hf_config(model_type, **overrides)
  cfg._attn_implementation = "eager"
  model_cls = {"qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM}
  model = model_cls[model_type](cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:  # norms and biases: move away from 1 / 0 so mistakes show
        p.add_(0.1 * torch.randn_like(p))
      else:
        p.normal_(0.0, 0.08)
  return model


def left_padded_batch(vocab: int, lengths=(9, 5, 7), seed: int = 0):
  rng = np.random.default_rng(seed)
  t = max(lengths)
  ids = np.zeros((len(lengths), t), np.int32)
  mask = np.zeros((len(lengths), t), np.int32)
  for b, n in enumerate(lengths):
    ids[b, t - n:] = rng.integers(0, vocab, size=n)
    mask[b, t - n:] = 1
  return ids, mask


def torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Reference logits with HF generate's positions: cumsum(mask) - 1."""
  ids_t = torch.from_numpy(ids.astype(np.int64))
  mask_t = torch.from_numpy(mask.astype(np.int64))
  pos = (mask_t.cumsum(-1) - 1).clamp(min=0)
  with torch.no_grad():
    out = model(input_ids=ids_t, attention_mask=mask_t, position_ids=pos)
  return out.logits.float().numpy()


# --- checkpoint folders as users bring them: real vocabulary sizes, special tokens and
# chat templates, reduced width and depth (tests/test_real_checkpoints.py) ----------------

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
  import json
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


def real_checkpoint(kind: str, path: str, corpus, seed: int = 0) -> str:
  """An HF folder written by transformers: 'qwen' (Qwen2.5-Instruct style: tied, 12/2
  heads, rope 1e6, vocab 151936, pad <|endoftext|>, eos <|im_end|> + <|endoftext|>) or
  'llama' (Llama-3.2-Instruct style: tied, 32/8 heads, llama3 rope, no pad token, BOS
  added by the tokenizer, eos <|end_of_text|> <|eom_id|> <|eot_id|>, <think> </think>
  added); width and depth reduced."""
  import json
  import os
  torch.manual_seed(seed)
  if kind == "qwen":
    tok = byte_bpe(corpus, 151643, QWEN_SPECIALS)
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False)
    hf_tok.chat_template = QWEN_TEMPLATE
    cfg = transformers.Qwen2Config(
        vocab_size=151936, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6,
        bos_token_id=151643, eos_token_id=151645)
    model = transformers.Qwen2ForCausalLM(cfg)
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
    cfg = transformers.LlamaConfig(
        vocab_size=128258, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=32, num_key_value_heads=8, head_dim=4,
        max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
    model = transformers.LlamaForCausalLM(cfg)
    eos = [128001, 128008, 128009]
    gen = {"bos_token_id": 128000, "eos_token_id": eos}
  else:
    raise ValueError(kind)
  with torch.no_grad():  # widen the weights so greedy choices are clear-cut
    for p in model.parameters():
      if p.ndim > 1:
        p.normal_(0.0, 0.1)
  model.save_pretrained(path, safe_serialization=True)
  hf_tok.save_pretrained(path)
  with open(os.path.join(path, "generation_config.json"), "w") as f:
    json.dump(gen, f)
  return path
