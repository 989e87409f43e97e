"""`builtin:tiny-arith`: a small Qwen2 model pre-trained here on the built-in arithmetic task.

The base model knows column addition but has the habits SCoRe was built to fix: half of its first
attempts slip (a dropped carry, a column off by one), and when asked to check it fixes only a fifth
of its slips while breaking almost a third of its right answers, so its second attempt is worse than
its first. The build is deterministic (fixed seeds) and cached under a key that hashes the recipe.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from engine.base.cache_folder import default_cache_dir, publish_folder
from engine.base.errors import UserError
from engine.builtin.tokenizer import build_char_tokenizer
from engine.tasks.arith import CORRECTION_INSTRUCTION, ArithProblem, arith_problems, sample_slip, worked_answer
from engine.tasks.arith_steps import slipped_step_pairs
from engine.tasks.judge import JUDGE_LABELS, JUDGE_TEMPLATE, judge_prompt
from engine.tasks.steps import DEFAULT_DELIMITER

# bump when the recipe below changes in a way the fields do not capture (2: 512 positions, so that
# rollout.turns=3 fits; RoPE has no position weights, so the weights are those of version 1)
BUILD_VERSION = 2
# ChatML's assistant turn, which _encode_episode's mask assumes: header, content, end token, newline
CHATML_HEADER, CHATML_END = "<|im_start|>assistant\n", "<|im_end|>"


@dataclass(frozen=True)
class TinyArithRecipe:
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    p_slip_t1: float = 0.5  # first attempt is wrong this often
    p_fix_t2: float = 0.2  # a wrong first attempt is fixed this often when asked to check
    p_break_t2: float = 0.3  # a right first attempt is broken this often
    # Share of training episodes that are judge questions (PSRLM's M0: which of two next steps is right, in
    # engine/tasks/judge.py's default format). At 0 it is left out of the cache key and draws nothing from the RNG,
    # so the default model stays the one built before the field existed.
    judge_mix: float = 0.0


def model_config(recipe: TinyArithRecipe, vocab_size: int, eos_id: int, pad_id: int, bos_id: int) -> Qwen2Config:
    # head_dim 64: vLLM's CPU attention rejects smaller heads.
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.hidden_size // 64,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        torch_dtype="float32",
    )


def _episode_messages(problem: ArithProblem, rng: random.Random, recipe: TinyArithRecipe) -> list[dict]:
    slip1 = sample_slip(problem, rng) if rng.random() < recipe.p_slip_t1 else None
    if slip1 is not None:
        slip2 = None if rng.random() < recipe.p_fix_t2 else slip1
    else:
        slip2 = sample_slip(problem, rng) if rng.random() < recipe.p_break_t2 else None
    return [
        {"role": "user", "content": problem.prompt},
        {"role": "assistant", "content": worked_answer(problem, slip1)},
        {"role": "user", "content": CORRECTION_INSTRUCTION},
        {"role": "assistant", "content": worked_answer(problem, slip2)},
    ]


def _judge_messages(problem: ArithProblem, rng: random.Random) -> list[dict]:
    """A judge question: the right next step and a slipped one after the right prefix, in random order.
    The reply is the right step, then its label ("4+8+1=13. A"): a label alone, with nothing worked out
    first, stayed at chance for this 2-layer model (measured: 600 steps of judge questions only)."""
    pair = rng.choice(slipped_step_pairs(problem, sample_slip(problem, rng), DEFAULT_DELIMITER))
    right_first = rng.random() < 0.5
    a, b = (pair.right, pair.wrong) if right_first else (pair.wrong, pair.right)
    label = JUDGE_LABELS[0 if right_first else 1]
    return [{"role": "user", "content": judge_prompt(JUDGE_TEMPLATE, pair.problem, pair.prefix, a, b)},
            {"role": "assistant", "content": f"{pair.right.strip()} {label}"}]


def _training_messages(problems, rng: random.Random, recipe: TinyArithRecipe) -> list[dict]:
    # `judge_mix and ...`: at 0 no extra draw, so the default recipe's RNG stream is unchanged
    if recipe.judge_mix and rng.random() < recipe.judge_mix:
        return _judge_messages(rng.choice(problems), rng)
    return _episode_messages(rng.choice(problems), rng, recipe)


def _encode_episode(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 mask that is 1 on assistant content and its end-of-turn token."""
    ids: list[int] = []
    mask: list[int] = []
    for i in range(len(messages)):
        text = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        new = tokenizer(text, add_special_tokens=False).input_ids[len(ids):]
        if messages[i]["role"] == "assistant":
            header = len(tokenizer(CHATML_HEADER, add_special_tokens=False).input_ids)
            # train on the content and <|im_end|>, not on the header or the trailing newline
            mask += [0] * header + [1] * (len(new) - header - 1) + [0]
        else:
            mask += [0] * len(new)
        ids += new
    return ids, mask


def require_chatml(tokenizer, source: str = "the tokenizer", hint: str = "use a model with a ChatML template "
                   "(SmolLM2, Qwen)") -> None:
    """Refuse a tokenizer whose chat template does not write ChatML turns: _encode_episode's mask would
    silently train on the wrong tokens. Checked on a probe episode: the masked tokens must decode to the
    assistant's content and its end token, nothing else."""
    probe = [{"role": "user", "content": "47+85=?"}, {"role": "assistant", "content": "Final Answer: 132"}]
    text, trained = None, None
    if tokenizer.chat_template:
        try:
            text = tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception:  # a template that rejects this conversation (e.g. one that demands a system turn)
            text = None
    if text is not None and text.endswith(f"{CHATML_HEADER}{probe[1]['content']}{CHATML_END}\n"):
        ids, mask = _encode_episode(tokenizer, probe)
        trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    if trained != probe[1]["content"] + CHATML_END:
        raise UserError(f"{source}: its chat template does not write turns as ChatML ({CHATML_HEADER!r} + answer + "
                        f"{CHATML_END + chr(10)!r}), so the training episodes' answer tokens cannot be masked; a "
                        f"user + assistant turn renders as {text!r}. Hint: {hint}.")


def _batch(tokenizer, problems, rng, recipe) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [_encode_episode(tokenizer, _training_messages(problems, rng, recipe)) for _ in range(recipe.batch_size)]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for r, (ids, mask) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(ids)] = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])
    return input_ids, labels


def pretrain(model, tokenizer, recipe: TinyArithRecipe, log=print, log_every: int = 100,
             tag: str = "tiny-arith") -> None:
    """Next-token training on synthetic two-turn episodes drawn from the pretrain split (train and validation,
    never eval; any causal LM
    whose tokenizer writes ChatML: engine/models/warmup.py warms real models up with it). A line with the loss
    every `log_every` steps and at the last."""
    require_chatml(tokenizer)
    problems = arith_problems("pretrain")
    rng = random.Random(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, recipe.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, recipe.steps) / recipe.steps))
    )
    model.train()
    start = time.time()
    for step in range(recipe.steps):
        input_ids, labels = _batch(tokenizer, problems, rng, recipe)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == recipe.steps - 1:
            log(f"[{tag}] pretrain step {step + 1}/{recipe.steps} loss {loss.item():.4f} "
                f"({time.time() - start:.0f}s)")
    model.eval()


def recipe_fields(recipe: TinyArithRecipe) -> dict:
    """The recipe as its cache key sees it: judge_mix only when used, then with the judge format it teaches
    (a format change rebuilds the model)."""
    fields = asdict(recipe)
    if not recipe.judge_mix:
        del fields["judge_mix"]
    else:
        fields["judge_format"] = {"template": JUDGE_TEMPLATE, "labels": list(JUDGE_LABELS),
                                  "delimiter": DEFAULT_DELIMITER}
    return fields


def recipe_key(recipe: TinyArithRecipe) -> str:
    blob = json.dumps({"version": BUILD_VERSION, **recipe_fields(recipe)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _model_dir(recipe: TinyArithRecipe, cache_dir: Path | None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"tiny-arith-{recipe_key(recipe)}"


def build_tiny_arith(recipe: TinyArithRecipe = TinyArithRecipe(), cache_dir: Path | None = None, log=print) -> Path:
    """Return the folder of the built model, building and caching it on first use."""
    target = _model_dir(recipe, cache_dir)
    if (target / "config.json").exists():
        return target
    log(f"[tiny-arith] building base model into {target} (first use; cached afterwards)")
    torch.manual_seed(recipe.seed)
    tokenizer = build_char_tokenizer()
    vocab_size = -(-len(tokenizer) // 64) * 64  # round up to a multiple of 64
    config = model_config(recipe, vocab_size, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)
    model = Qwen2ForCausalLM(config)
    pretrain(model, tokenizer, recipe, log=log)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        (folder / "recipe.json").write_text(json.dumps(recipe_fields(recipe), indent=2))

    publish_folder(target, write)
    return target


def cached_tiny_arith(recipe: TinyArithRecipe = TinyArithRecipe(), cache_dir: Path | None = None) -> Path:
    target = _model_dir(recipe, cache_dir)
    if not (target / "config.json").exists():
        raise FileNotFoundError(f"{target} has not been built; call build_tiny_arith() first")
    return target
