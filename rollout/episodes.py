"""Two-turn self-correction episodes: turn 1 answers the prompt, turn 2 answers again after the
correction instruction. Both turns are sampled by vLLM; token ids are kept exactly as sampled so
the learner scores the very tokens vLLM produced."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import UserError
from rollout.data import Problem
from rollout.vllm_engine import Completion, RolloutEngine


@dataclass
class Episode:
    problem: Problem
    group: int  # index of the prompt within the step; the n samples of a prompt share it
    prompt_ids: list[int]  # turn-1 prompt (chat template applied)
    turn1: Completion
    turn2_prompt_ids: list[int]  # prompt_ids + turn1 ids + correction request
    turn2: Completion

    @property
    def input_ids(self) -> list[int]:
        return self.turn2_prompt_ids + self.turn2.token_ids

    @property
    def turn1_span(self) -> tuple[int, int]:
        start = len(self.prompt_ids)
        return start, start + len(self.turn1.token_ids)

    @property
    def turn2_span(self) -> tuple[int, int]:
        start = len(self.turn2_prompt_ids)
        return start, start + len(self.turn2.token_ids)


def _render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return tokenizer(_render(tokenizer, [{"role": "user", "content": prompt}]), add_special_tokens=False).input_ids


def correction_request_ids(tokenizer, prompt: str, turn1: Completion, instruction: str) -> list[int]:
    """Tokens that follow the sampled turn-1 tokens: end of the assistant turn, the user's correction
    instruction, and the assistant header. Taken from the chat template by rendering the conversation
    with and without the request and tokenizing only the difference."""
    before = _render(tokenizer, [{"role": "user", "content": prompt}]) + turn1.text
    after = _render(tokenizer, [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": turn1.text},
        {"role": "user", "content": instruction},
    ])
    if not after.startswith(before):
        raise UserError(
            "the chat template does not render the first answer verbatim, so the correction turn cannot "
            "extend the sampled tokens. Hint: use a template that keeps assistant content unchanged."
        )
    ids = tokenizer(after[len(before):], add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id
    if turn1.finished and turn1.token_ids and turn1.token_ids[-1] == eos and ids and ids[0] == eos:
        ids = ids[1:]  # vLLM already returned the end-of-turn token as the last sampled token
    return ids


def turn_overhead(tokenizer, prompt: str, max_tokens: int, instruction: str) -> int:
    """The tokens an episode adds to its rendered prompt at most: two full turns and the correction
    request. Building the request also checks the chat template up front."""
    truncated = Completion(token_ids=[], logprobs=[], text="", finished=False)
    return 2 * max_tokens + len(correction_request_ids(tokenizer, prompt, truncated, instruction))


def sample_episodes(engine: RolloutEngine, tokenizer, problems: Sequence[Problem], n: int, max_tokens: int,
                    temperature: float, instruction: str, progress: bool = False) -> list[Episode]:
    """Turn 1: n samples per problem. Turn 2: one correction per turn-1 sample. `progress` shows
    vLLM's progress bar for each turn."""
    prompt_ids = [encode_prompt(tokenizer, p.prompt) for p in problems]
    first = engine.generate(prompt_ids, n=n, max_tokens=max_tokens, temperature=temperature, progress=progress)
    flat = [(g, c) for g, comps in enumerate(first) for c in comps]
    turn2_prompts = [
        prompt_ids[g] + c.token_ids + correction_request_ids(tokenizer, problems[g].prompt, c, instruction)
        for g, c in flat
    ]
    second = engine.generate(turn2_prompts, n=1, max_tokens=max_tokens, temperature=temperature, progress=progress)
    return [
        Episode(problems[g], g, prompt_ids[g], c, t2p, out[0])
        for (g, c), t2p, out in zip(flat, turn2_prompts, second)
    ]
