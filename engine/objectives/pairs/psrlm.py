"""pairs.kind=psrlm: process-based self-rewarding (PSRLM, arXiv 2503.03746). The policy writes each prompt's
answer step by step and judges its own candidate steps; no reward and no label is read.

For every prompt of the rank's share, up to steps.max_steps times (all prompts batched, two vLLM calls per
depth):
  1. sample steps.candidates next steps from the prompt + the steps so far, each stopping at a steps.stops
     string or the end of the answer (cut at the first steps.delimiter match); identical samples are one;
  2. the policy judges every pair of distinct candidates in both orders (rewards/judging.py);
  3. the candidate with the best net score (consistent wins - losses) is chosen over the one with the
     worst: PreferencePair(kind="step", context = prompt + steps so far, chosen, rejected, weight 1);
     ties at either end or no consistent verdict give no pair;
  4. the prefix grows by the best candidate (with no pair: the best net score, then the most sampled); a chain
     ends when that step ends the answer (end-of-turn token, a final answer, or no delimiter) or the response
     budget (rollout.max_tokens) is spent.
Step DPO is then plain DPO on these pairs (engine/objectives/dpo_step.py scores the response after the context).
The round's counts go to RoundInputs.stats as steps/* (summed over ranks, logged per round).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.objectives.pairs.builders import PreferencePair, RoundInputs, register
from engine.objectives.pairs.judge_probe import judge_accuracy
from engine.objectives.pairs.probes import RoundProbe, register_probe
from engine.tasks.answer import extract_answer
from engine.tasks.data import Problem
from engine.tasks.judge import best_and_worst, continuation, net_scores
from engine.tasks.steps import Step, first_step, has_delimiter, tokenizer_decoder
from rewards.judging import StepQuestion, ask_judge
from rollout.episodes import encode_prompt

# Counts per round (summed over ranks): prompts, chosen steps, responses with no delimiter (one step),
# candidate pairs judged and judged consistently, prefixes with one distinct candidate or with no pair, pairs.
STAT_KEYS = ("chains", "steps", "no_delimiter", "questions", "consistent", "one_candidate", "no_pair", "pairs")


@dataclass
class Chain:
    """One prompt's answer as it grows, step by step."""
    problem: Problem
    prompt_ids: list[int]
    steps: list[Step] = field(default_factory=list)
    done: bool = False

    @property
    def context_ids(self) -> list[int]:
        return self.prompt_ids + [t for s in self.steps for t in s.token_ids]

    @property
    def prefix_text(self) -> str:
        return "".join(s.text for s in self.steps)

    @property
    def response_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.steps)


@dataclass
class Candidates:
    steps: list[Step]  # distinct next steps, in order of first sampling
    counts: list[int]  # how many samples each was


def distinct_steps(sampled: Sequence[Step]) -> Candidates:
    """Identical samples (same token ids) are one candidate, counted."""
    seen: dict[tuple[int, ...], int] = {}
    out = Candidates([], [])
    for step in sampled:
        key = tuple(step.token_ids)
        if key not in seen:
            seen[key] = len(out.steps)
            out.steps.append(step)
            out.counts.append(0)
        out.counts[seen[key]] += 1
    return out


def step_budget(chain: Chain, max_step_tokens: int, response_tokens: int, max_model_len: int) -> int:
    """Tokens the next step may take: the step limit, the response budget left, the context left."""
    return min(max_step_tokens, response_tokens - chain.response_tokens, max_model_len - len(chain.context_ids))


def ends_answer(step: Step, eos_id: int, delimiter: str) -> bool:
    """A step ends the answer when it ends the turn, states a final answer, or has no delimiter (it ran to
    the end of the turn or out of budget: no step boundary to continue from)."""
    ended_turn = bool(step.token_ids) and step.token_ids[-1] == eos_id
    return ended_turn or extract_answer(step.text) is not None or not has_delimiter(step.text, delimiter)


def sample_candidates(engine, tokenizer, cfg, chains: Sequence[Chain], budgets: Sequence[int]) -> list[Candidates]:
    outputs = engine.generate([c.context_ids for c in chains], n=cfg.steps.candidates, max_tokens=list(budgets),
                              temperature=cfg.rollout.temperature, stop=list(cfg.steps.stops))
    decode = tokenizer_decoder(tokenizer)
    return [distinct_steps([first_step(s.token_ids, decode, cfg.steps.delimiter) for s in samples])
            for samples in outputs]


def judge_candidates(engine, tokenizer, cfg, chains: Sequence[Chain],
                     candidates: Sequence[Candidates]) -> list[dict[tuple[int, int], int | None]]:
    """Every pair (i < j) of each chain's distinct candidates, both orders, in one judge call."""
    keys = [(c, i, j) for c, cands in enumerate(candidates)
            for i in range(len(cands.steps)) for j in range(i + 1, len(cands.steps))]
    questions = [StepQuestion(chains[c].problem.prompt, chains[c].prefix_text, candidates[c].steps[i].text,
                              candidates[c].steps[j].text) for c, i, j in keys]
    combined = ask_judge(engine, tokenizer, cfg.judge, questions).combined if questions else []
    verdicts: list[dict[tuple[int, int], int | None]] = [{} for _ in chains]
    for (c, i, j), winner in zip(keys, combined):
        verdicts[c][(i, j)] = winner
    return verdicts


def grow(chain: Chain, cands: Candidates, verdicts: dict, tally: Counter, eos_id: int,
         delimiter: str) -> list[PreferencePair]:
    """One depth of one chain: its pair (if the verdicts single out a best and a worst), then the prefix
    grows by the continuation candidate."""
    scores = net_scores(len(cands.steps), verdicts)
    picked = best_and_worst(scores) if len(cands.steps) > 1 else None
    tally.update(questions=len(verdicts), consistent=sum(v is not None for v in verdicts.values()),
                 one_candidate=len(cands.steps) == 1, no_pair=len(cands.steps) > 1 and picked is None)
    pairs = []
    if picked is not None:
        best, worst = (cands.steps[k] for k in picked)
        pairs.append(PreferencePair(kind="step", prompt=chain.problem.prompt, context_ids=chain.context_ids,
                                    chosen_ids=list(best.token_ids), rejected_ids=list(worst.token_ids),
                                    chosen_text=best.text, rejected_text=worst.text,
                                    chosen_score=float(scores[picked[0]]), rejected_score=float(scores[picked[1]]),
                                    weight=1.0))
    step = cands.steps[continuation(scores, cands.counts)]
    chain.steps.append(step)
    chain.done = ends_answer(step, eos_id, delimiter)
    return pairs


@register("psrlm")
def psrlm_pairs(inputs: RoundInputs) -> list[PreferencePair]:
    cfg, tokenizer, engine = inputs.cfg, inputs.tokenizer, inputs.engine
    chains = [Chain(p, encode_prompt(tokenizer, p.prompt)) for p in inputs.problems]
    pairs, tally = [], Counter(dict.fromkeys(STAT_KEYS, 0))
    for _ in range(cfg.steps.max_steps):
        budgets = {id(c): step_budget(c, cfg.steps.max_step_tokens, cfg.rollout.max_tokens, engine.max_model_len)
                   for c in chains}
        active = [c for c in chains if not c.done and budgets[id(c)] > 0]
        if not active:
            break
        candidates = sample_candidates(engine, tokenizer, cfg, active, [budgets[id(c)] for c in active])
        verdicts = judge_candidates(engine, tokenizer, cfg, active, candidates)
        for chain, cands, judged in zip(active, candidates, verdicts):
            pairs += grow(chain, cands, judged, tally, tokenizer.eos_token_id, cfg.steps.delimiter)
    tally.update(chains=len(chains), steps=sum(len(c.steps) for c in chains), pairs=len(pairs),
                 no_delimiter=sum(not has_delimiter(c.prefix_text, cfg.steps.delimiter) for c in chains))
    inputs.stats.update({f"steps/{k}": float(v) for k, v in sorted(tally.items())})
    return pairs


register_probe("psrlm", RoundProbe("judge", judge_accuracy))
