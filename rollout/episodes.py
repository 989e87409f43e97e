"""Self-correction episodes of K turns: turn 1 answers the prompt; each later turn answers again after the
correction instruction, seeing the prompt and every earlier turn. All turns are sampled by vLLM; token ids
are kept exactly as sampled so the learner scores the very tokens vLLM produced."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.base.errors import UserError
from engine.tasks.data import Problem
from rollout.vllm_engine import Completion, RolloutEngine


@dataclass
class Episode:
    problem: Problem
    group: int  # index of the prompt within the step; the n samples of a prompt share it
    turn_prompt_ids: list[list[int]]  # per turn, the context it was sampled from (each extends the previous)
    turns: list[Completion]

    @property
    def prompt_ids(self) -> list[int]:
        """The turn-1 prompt (chat template applied)."""
        return self.turn_prompt_ids[0]

    @property
    def input_ids(self) -> list[int]:
        return self.turn_prompt_ids[-1] + self.turns[-1].token_ids

    def span(self, turn: int) -> tuple[int, int]:
        """[start, end) of turn `turn`'s (0-based) sampled tokens in input_ids."""
        start = len(self.turn_prompt_ids[turn])
        return start, start + len(self.turns[turn].token_ids)


def rows_by_prompt(episodes: Sequence[Episode]) -> list[list[int]]:
    """Row indices of each prompt's episodes (those sharing a group), in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for row, ep in enumerate(episodes):
        groups.setdefault(ep.group, []).append(row)
    return list(groups.values())


def _render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return tokenizer(_render(tokenizer, [{"role": "user", "content": prompt}]), add_special_tokens=False).input_ids


def correction_request_ids(tokenizer, prompt: str, turns: Sequence[Completion], instruction: str) -> list[int]:
    """Tokens that follow the last sampled turn: end of the assistant turn, the user's correction
    instruction, and the assistant header. Taken from the chat template by rendering the conversation
    with and without the request and tokenizing only the difference."""
    messages = [{"role": "user", "content": prompt}]
    for earlier in turns[:-1]:
        messages += [{"role": "assistant", "content": earlier.text}, {"role": "user", "content": instruction}]
    before = _render(tokenizer, messages) + turns[-1].text
    after = _render(tokenizer, messages + [{"role": "assistant", "content": turns[-1].text},
                                           {"role": "user", "content": instruction}])
    if not after.startswith(before):
        raise UserError(
            "the chat template does not render the first answer verbatim, so the correction turn cannot "
            "extend the sampled tokens. Hint: use a template that keeps assistant content unchanged."
        )
    ids = tokenizer(after[len(before):], add_special_tokens=False).input_ids
    last, eos = turns[-1], tokenizer.eos_token_id
    if last.finished and last.token_ids and last.token_ids[-1] == eos and ids and ids[0] == eos:
        ids = ids[1:]  # vLLM already returned the end-of-turn token as the last sampled token
    return ids


def turn_overhead(tokenizer, prompt: str, max_tokens: int, instruction: str, turns: int = 2) -> int:
    """The tokens an episode adds to its rendered prompt at most: `turns` full turns and a correction
    request before each turn after the first. Building the request also checks the chat template up front."""
    truncated = Completion(token_ids=[], logprobs=[], text="", finished=False)
    return turns * max_tokens + (turns - 1) * len(correction_request_ids(tokenizer, prompt, [truncated], instruction))


def sample_episodes(engine: RolloutEngine, tokenizer, problems: Sequence[Problem], n: int, max_tokens: int,
                    temperature: float, instruction: str, turns: int = 2, progress: bool = False,
                    min_tokens: int = 0) -> list[Episode]:
    """Turn 1: n samples per problem. Each later turn: one correction per chain, one vLLM call per turn, of
    at most max_tokens or the room left in the engine's context (and at least min_tokens, within it).
    `progress` prints a line naming each turn, then vLLM's progress bar (with its ETA) while it samples."""
    if not problems:  # a rank whose share of the evaluation is empty (eval.problems < ranks)
        return []
    prompt_ids = [encode_prompt(tokenizer, p.prompt) for p in problems]
    if progress:
        print(f"[sample] turn 1/{turns}: {len(prompt_ids) * n} answers to {len(prompt_ids)} prompts", flush=True)
    first = engine.generate(prompt_ids, n=n, max_tokens=max_tokens, temperature=temperature, progress=progress,
                            min_tokens=min_tokens)
    episodes = [Episode(problems[g], g, [prompt_ids[g]], [c]) for g, comps in enumerate(first) for c in comps]
    for turn in range(2, turns + 1):
        if progress:
            print(f"[sample] turn {turn}/{turns}: {len(episodes)} corrections", flush=True)
        contexts = [ep.input_ids + correction_request_ids(tokenizer, ep.problem.prompt, ep.turns, instruction)
                    for ep in episodes]
        budgets = [min(max_tokens, engine.max_model_len - len(c)) for c in contexts]
        # Training checks up front that every episode fits (engine.loop.inputs.fit_to_model), so budgets are
        # max_tokens; a longer chain at inference (evaluate with more turns) gets the room that is left,
        # and a chain with no room left gets an empty, unfinished turn (no answer: scored wrong).
        room = [i for i, b in enumerate(budgets) if b > 0]
        budget = max_tokens if min(budgets) == max_tokens else [budgets[i] for i in room]
        outputs = engine.generate([contexts[i] for i in room], n=1, max_tokens=budget, temperature=temperature,
                                  progress=progress, min_tokens=min_tokens) if room else []
        sampled = dict(zip(room, (out[0] for out in outputs)))
        for i, (ep, context) in enumerate(zip(episodes, contexts)):
            ep.turn_prompt_ids.append(context)
            ep.turns.append(sampled.get(i) or Completion(token_ids=[], logprobs=[], text="", finished=False))
    return episodes
