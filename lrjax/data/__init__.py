"""Tasks (synthetic and Hugging Face datasets), text formats, tokenizer, delimiter detection.

    from lrjax.data import default_data_config, load_task, prompt_text, cot_text
    data = load_task(default_data_config())      # TaskData(train, eval, reward)
"""
from lrjax.data import hf_datasets, synthetic  # noqa: F401 - register the tasks
from lrjax.data.delimiter import delimiter_step, delimiter_tables
from lrjax.data.hf_datasets import DataError
from lrjax.data.tasks import (ANSWER_DELIMITER, TASKS, Problem, TaskData, answer_text, cot_text,
                              default_data_config, load_task, nocot_text, prompt_text,
                              registered_tasks, steps_text)
from lrjax.data.tokenizer import (DEFAULT_ALPHABET, LATENT_TOKENS, add_latent_tokens,
                                  build_char_tokenizer, load_tokenizer, save_tokenizer)

__all__ = [
    "ANSWER_DELIMITER", "DEFAULT_ALPHABET", "DataError", "LATENT_TOKENS", "Problem", "TASKS",
    "TaskData", "add_latent_tokens", "answer_text", "build_char_tokenizer", "cot_text",
    "default_data_config", "delimiter_step", "delimiter_tables", "load_task", "load_tokenizer",
    "nocot_text", "prompt_text", "registered_tasks", "save_tokenizer", "steps_text",
]
