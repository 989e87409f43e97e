"""RLSF's fallback for responses without an answer format: ask the policy to finish
"<response> So the answer is" greedily, and take as the answer the longest token run that the short
continuation shares with the response and that carries content (a letter or digit)."""

from __future__ import annotations

from collections.abc import Sequence

from engine.tasks.answer_span import answer_run, answer_token_span
from rollout.vllm_engine import RolloutEngine


def probe_answer_spans(engine: RolloutEngine, tokenizer, episodes: Sequence, probe_text: str,
                       probe_tokens: int, min_tokens: int = 1) -> int:
    """Set `probe_span` on every turn whose answer no format locates (None where the probe shares no run of
    `min_tokens` or more tokens with content); returns how many were probed."""
    eos = tokenizer.eos_token_id
    todo = []
    for ep in episodes:
        for completion, prompt_ids in zip(ep.turns, ep.turn_prompt_ids):
            if answer_token_span(tokenizer, completion.token_ids, completion.text) is None:
                body = [t for t in completion.token_ids if t != eos]
                todo.append((completion, body, prompt_ids + body + tokenizer(probe_text, add_special_tokens=False).input_ids))
    if not todo or probe_tokens <= 0:
        return 0
    outputs = engine.generate([ids for _, _, ids in todo], n=1, max_tokens=probe_tokens, temperature=0.0)
    for (completion, body, _), out in zip(todo, outputs):
        completion.probe_span = answer_run(tokenizer, body, out[0].token_ids, min_tokens)
    return len(todo)
