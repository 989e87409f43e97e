"""Asking the policy to judge pairs of candidate steps, through vLLM: both orders of every pair in one
greedy call, a few tokens each (judge.max_tokens), parsed and combined by engine/tasks/judge.py's rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.tasks.judge import combine_orders, judge_prompt, parse_verdict
from rollout.episodes import encode_prompt


@dataclass(frozen=True)
class StepQuestion:
    """Which of two next steps x, y is right after `prefix` (the steps so far, as text)?"""
    problem: str
    prefix: str
    x: str
    y: str


@dataclass(frozen=True)
class Verdicts:
    first: list[int | None]  # per question, the parsed answer with A = x, B = y
    second: list[int | None]  # with A = y, B = x
    combined: list[int | None]  # 0: x is right, 1: y is right, None: no consistent verdict


def judge_prompt_ids(tokenizer, judge_cfg, question: StepQuestion, swapped: bool) -> list[int]:
    a, b = (question.y, question.x) if swapped else (question.x, question.y)
    text = judge_prompt(judge_cfg.template, question.problem, question.prefix, a, b, tuple(judge_cfg.labels))
    return encode_prompt(tokenizer, text)


def ask_judge(engine, tokenizer, judge_cfg, questions: Sequence[StepQuestion]) -> Verdicts:
    """Both orders of every question in one greedy vLLM call. A question whose prompt leaves no room for
    the answer in the engine's context gets no verdict."""
    prompts = [judge_prompt_ids(tokenizer, judge_cfg, q, swapped) for q in questions for swapped in (False, True)]
    fits = [i for i, p in enumerate(prompts) if len(p) + judge_cfg.max_tokens <= engine.max_model_len]
    answers = engine.generate([prompts[i] for i in fits], n=1, max_tokens=judge_cfg.max_tokens,
                              temperature=0.0) if fits else []
    labels = tuple(judge_cfg.labels)
    parsed: list[int | None] = [None] * len(prompts)
    for i, out in zip(fits, answers):
        parsed[i] = parse_verdict(out[0].text, labels)
    first, second = parsed[0::2], parsed[1::2]
    return Verdicts(first, second, [combine_orders(f, s) for f, s in zip(first, second)])
