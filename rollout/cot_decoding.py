"""CoT decoding (Wang & Zhou 2024, "Chain-of-Thought Reasoning Without Prompting"), as RLSF uses it.

Greedy decoding commits to the single most likely first token and often answers at once; the greedy
paths that start from the 2nd..k-th most likely first token frequently contain a reasoning trace
instead. So each prompt branches on its top-k first tokens and every branch is continued greedily;
RLSF then ranks these k traces by the model's confidence in their answers.
"""

from __future__ import annotations

from collections.abc import Sequence

from rollout.vllm_engine import Completion, RolloutEngine


def _piece(tokenizer, prompt: list[int], token: int) -> str:
    # Decoded in the prompt's context, as vLLM's detokenizer does (a lone token can lose a leading space).
    before = tokenizer.decode(prompt, skip_special_tokens=True)
    after = tokenizer.decode(prompt + [token], skip_special_tokens=True)
    return after[len(before):] if after.startswith(before) else tokenizer.decode([token], skip_special_tokens=True)


def cot_decode(engine: RolloutEngine, tokenizer, prompts: Sequence[list[int]], branches: int,
               max_tokens: int) -> list[list[Completion]]:
    """Per prompt (token ids), `branches` greedy completions, one per top-`branches` first token, best first.
    A branch whose first token is EOS is just that token (finished, empty text), like a greedy stop."""
    if branches < 1:
        raise ValueError(f"branches must be >= 1, got {branches}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    eos = tokenizer.eos_token_id
    # One greedy step for all prompts; its top-k log-probs (raw: greedy) name the branches' first tokens.
    heads = [out[0] for out in engine.generate(prompts, n=1, max_tokens=1, temperature=0.0,
                                               top_k_logprobs=branches)]
    firsts: list[list[tuple[int, float]]] = []
    for prompt, head in zip(prompts, heads):
        assert head.top_token_ids is not None and head.top_logprobs is not None
        pairs = list(zip(head.top_token_ids[0], head.top_logprobs[0]))[:branches]
        if len(pairs) < branches:  # vLLM returns k entries unless the vocabulary is smaller
            raise ValueError(f"the model offers only {len(pairs)} first tokens, fewer than branches={branches}")
        firsts.append(pairs)
    # One batched greedy call continues every branch that did not stop on its first token.
    todo = [(i, b) for i, pairs in enumerate(firsts) for b, (tok, _) in enumerate(pairs)
            if tok != eos and max_tokens > 1]
    rest: dict[tuple[int, int], Completion] = {}
    if todo:
        conts = engine.generate([list(prompts[i]) + [firsts[i][b][0]] for i, b in todo], n=1,
                                max_tokens=max_tokens - 1, temperature=0.0)
        rest = {key: out[0] for key, out in zip(todo, conts)}
    results: list[list[Completion]] = []
    for i, pairs in enumerate(firsts):
        row = []
        for b, (tok, lp) in enumerate(pairs):
            cont = rest.get((i, b))
            if cont is None:  # stopped on EOS (vLLM leaves the stop token out of text) or no room left
                row.append(Completion(token_ids=[tok], logprobs=[lp], finished=tok == eos,
                                      text="" if tok == eos else _piece(tokenizer, list(prompts[i]), tok)))
                continue
            row.append(Completion(token_ids=[tok] + cont.token_ids, logprobs=[lp] + cont.logprobs,
                                  text=_piece(tokenizer, list(prompts[i]), tok) + cont.text,
                                  finished=cont.finished))
        results.append(row)
    return results
