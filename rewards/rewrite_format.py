"""The one input format of the sequence-to-sequence reward model (arXiv 2409.00162), shared by its trainer
(engine/train_rm.py) and the reward that uses it (rewards/seq2seq.py): the problem as the user's turn, the
response to judge as the assistant's, the rewrite instruction as the user's next turn, then the assistant
header; the reward model's reply is the rewritten (preferred) response. On the built-in task this is the
shape of a correction turn, so the reward model is a corrector.
"""

from __future__ import annotations

# Saved by train_rm in the reward model's folder: {"rewrite_instruction": ...}, the question it learned to answer.
REWRITE_FILE = "rewrite.json"


def rewrite_context_ids(tokenizer, prompt: str, response: str, instruction: str) -> list[int]:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response},
                {"role": "user", "content": instruction}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def rewrite_target_ids(tokenizer, response: str) -> list[int]:
    """What the reward model learns to produce: the preferred response, then the end-of-turn token."""
    return tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def cut_at_end_of_turn(generated: list[int], eos_id: int) -> list[int]:
    """The rewrite: the generated tokens up to and including the first end of turn."""
    return generated[:generated.index(eos_id) + 1] if eos_id in generated else generated
