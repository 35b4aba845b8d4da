"""Builders for tests and benchmarks (need torch and transformers; the library never imports
them): HF checkpoint folders in the real Qwen2.5 / Llama-3.2 layouts, Hub-layout data files."""
