"""`reward.kind=seq2seq`: token-level rewards from a sequence-to-sequence reward model (arXiv 2409.00162).

The reward model (trained by `python -m engine.train_rm`) rewrites a response into the one it prefers.
Each sampled turn is rewritten greedily (Hugging Face `generate` on the learner's rank: the reward model is
a second, frozen model beside the policy, not the rollout engine's), the two token sequences are aligned by
edit distance (rewards/alignment.py), and every sampled token gets reward.keep or reward.change; a rewrite
equal to the response gives every token reward.identical. The reward of a turn is [episodes, tokens]; the
learner turns it into per-token advantages (engine/update/algorithms.py, token_advantages).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from engine.base.errors import UserError
from rewards.alignment import token_rewards
from rewards.checked import RewardError
from rewards.registry import RewardInputs, register
from rewards.rewrite_format import REWRITE_FILE, cut_at_end_of_turn, rewrite_context_ids

HINT = "Hint: train one with `python -m engine.train_rm CONFIG` and pass its <rm.output_dir>/model folder."


def check_reward_model(options, tokenizer) -> None:
    """At start-up: reward.model is a causal-LM folder whose tokenizer is the policy's (rewards compare ids)."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(options.model) if options.model else None
    if path is None or not (path / "config.json").is_file():
        what = "reward.model is not set" if path is None else \
            f"reward.model={options.model!r} is not a folder with a config.json"
        raise UserError(f"reward.kind=seq2seq needs a reward model, but {what}. {HINT}")
    config = AutoConfig.from_pretrained(path)
    causal = {name for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
              for name in ((names,) if isinstance(names, str) else names)}
    architectures = getattr(config, "architectures", None) or []
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (architectures and
                                                                     not set(architectures) & causal):
        raise UserError(f"reward.model={options.model!r} holds a {config.model_type} model "
                        f"({', '.join(architectures) or 'no architecture named'}), not a causal LM: the seq2seq "
                        f"reward needs a decoder that rewrites responses. {HINT}")
    saved = path / REWRITE_FILE
    try:
        trained_on = json.loads(saved.read_text()).get("rewrite_instruction") if saved.is_file() else None
    except (ValueError, AttributeError):
        raise UserError(f"reward.model={options.model!r}: {saved} is not a JSON object with 'rewrite_instruction' "
                        f"(train_rm writes it). Hint: remove it to skip the check, or retrain.") from None
    if trained_on is not None and trained_on != options.rewrite_instruction:
        raise UserError(f"reward.rewrite_instruction={options.rewrite_instruction!r}, but reward.model="
                        f"{options.model!r} was trained to answer {trained_on!r} ({saved}): it would be asked a "
                        f"question it never saw. Hint: pass reward.rewrite_instruction={trained_on!r}.")
    probe = "12+34=?\n2+4=6, 1+3+0=4. Final Answer: 46"
    theirs = AutoTokenizer.from_pretrained(path)
    if theirs(probe, add_special_tokens=False).input_ids != tokenizer(probe, add_special_tokens=False).input_ids:
        raise UserError(f"reward.model={options.model!r} has a tokenizer other than the policy's (model.path): the "
                        f"reward compares token ids, so both must share one tokenizer. {HINT}")


@torch.no_grad()
def greedy_rewrites(model, contexts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], pad_id: int,
                    eos_id: int, batch_size: int = 64, max_positions: int | None = None,
                    synced: bool | None = None) -> list[list[int]]:
    """Each context's greedy continuation up to and including the end-of-turn token, in left-padded batches
    of batch_size; a batch generates as many tokens as the most any of its contexts asks for (max_new_tokens,
    one per context), cut to what max_positions leaves after the longest context (no room: empty rewrites).
    synced: transformers' synced_gpus (ZeRO-3 generation on every rank); None lets transformers decide."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start:start + batch_size]
        width = max(len(c) for c in chunk)
        budget = max(max_new_tokens[start:start + batch_size])
        if max_positions is not None:
            budget = min(budget, max_positions - width)
        if budget < 1:
            out += [[] for _ in chunk]
            continue
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, context in enumerate(chunk):  # left padding: every row's continuation starts at `width`
            ids[row, width - len(context):] = torch.tensor(context)
            mask[row, width - len(context):] = 1
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=budget,
                                   do_sample=False, eos_token_id=eos_id, pad_token_id=pad_id, synced_gpus=synced)
        out += [cut_at_end_of_turn(row.tolist(), eos_id) for row in generated[:, width:]]
    return out


class Rewriter:
    """The frozen reward model: greedy rewrites of batches of contexts (token ids)."""

    def __init__(self, path: str):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.max_positions = self.model.config.max_position_embeddings

    def rewrite(self, contexts: list[list[int]], max_tokens: int, pad_id: int, eos_id: int,
                batch_size: int = 64) -> list[list[int]]:
        """Each context's greedy continuation up to and including the end-of-turn token (or the budget)."""
        return greedy_rewrites(self.model, contexts, [max_tokens] * len(contexts), pad_id, eos_id, batch_size,
                               self.max_positions)


def check_room(max_positions: int, contexts: list[list[int]], turns, model: str) -> None:
    """A rewrite cut short by the reward model's context would mark the response's tail as deleted: refuse."""
    room, longest = max_positions - max(len(c) for c in contexts), max(len(t.token_ids) for t in turns)
    if room < longest:
        raise RewardError(f"reward.model={model!r} has {max_positions} positions: after the longest rewrite context "
                          f"({max_positions - room} tokens) there is room for {room} tokens, fewer than the "
                          f"{longest}-token response it must rewrite. Hint: a reward model with a longer context "
                          f"(max_position_embeddings), or a lower rollout.max_tokens, in a new run (another train.output_dir: "
                          f"a resume keeps the checkpoint's settings).")


@lru_cache(maxsize=2)
def load_rewriter(path: str) -> Rewriter:
    return Rewriter(path)


def token_reward_bounds(options, tokenizer) -> tuple[float, float]:
    """Every token earns reward.keep, reward.change or reward.identical, so does their turn mean."""
    values = (options.keep, options.change, options.identical)
    return min(values), max(values)


@register("seq2seq", check=check_reward_model, bounds=token_reward_bounds,
          reads=("model", "rewrite_instruction", "keep", "change", "identical", "rewrite_max_tokens"))
def seq2seq_reward(inputs: RewardInputs) -> list[Tensor]:
    """Per turn, [episodes, longest response] token rewards from the reward model's rewrites."""
    options, tokenizer = inputs.options, inputs.tokenizer
    rewriter = load_rewriter(str(options.model))
    out = []
    for k in range(len(inputs.episodes[0].turns)):
        turns = [e.turns[k] for e in inputs.episodes]
        contexts = [rewrite_context_ids(tokenizer, e.problem.prompt, t.text, options.rewrite_instruction)
                    for e, t in zip(inputs.episodes, turns)]
        check_room(rewriter.max_positions, contexts, turns, options.model)
        rewrites = rewriter.rewrite(contexts, options.rewrite_max_tokens, tokenizer.pad_token_id,
                                    tokenizer.eos_token_id)
        rows = [token_rewards(t.token_ids, rw, options.keep, options.change, options.identical)
                for t, rw in zip(turns, rewrites)]
        values = torch.zeros(len(rows), max(len(r) for r in rows))
        for i, row in enumerate(rows):
            values[i, :len(row)] = torch.tensor(row)
        out.append(values)
    return out
