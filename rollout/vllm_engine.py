"""The rollout side: one in-process vLLM engine that samples completions with their log-probs
and takes new weights from the learner after every update."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from engine.base.errors import UserError


@dataclass
class Completion:
    """One sampled continuation of a prompt."""

    token_ids: list[int]
    logprobs: list[float]  # the sampled tokens' log-probs under the policy that sampled them (logits / T)
    text: str
    finished: bool  # ended on a stop token rather than on the length limit
    top_logprobs: list[list[float]] | None = None  # per position, the k best log-probs (logits / T), best first
    top_token_ids: list[list[int]] | None = None  # per position, the token ids of those k best, same order
    probe_span: tuple[int, int] | None = None  # answer tokens found by RLSF's probe (rollout.answer_probe)


def _configure_vllm_env(kv_cache_gib: int) -> None:
    # In-process engine: weights can be swapped in place (see shared/ENVIRONMENT.md).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)  # rollout.kv_cache_gib is the one source of truth
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


class RolloutStartError(UserError):
    """vLLM could not build its engine; the message carries vLLM's own reason."""


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    return err


class RolloutEngine:
    """A thin wrapper over `vllm.LLM`: token ids in, completions with log-probs out."""

    def __init__(self, model_path: str, max_model_len: int, seed: int, dtype: str = "float32",
                 kv_cache_gib: int = 1, gpu_memory_utilization: float = 0.3, trust_remote_code: bool = False):
        _configure_vllm_env(kv_cache_gib)
        from vllm import LLM

        try:
            # processed_logprobs: log-probs of the tempered distribution the tokens were drawn from (greedy
            # requests: the raw ones), which is what the learner's IS ratio and mismatch check compare with.
            self.llm = LLM(model=model_path, dtype=dtype, max_model_len=max_model_len, enforce_eager=True, seed=seed,
                           gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=trust_remote_code,
                           logprobs_mode="processed_logprobs")
        except Exception as err:  # vLLM raises many types; the user needs its reason, not its stack
            cause = _root_cause(err)
            reason = f"{type(err).__name__}: {str(err).rstrip('.')}"
            if cause is not err:
                reason += f" (caused by {type(cause).__name__}: {str(cause).rstrip('.')})"
            raise RolloutStartError(
                f"vLLM could not start the rollout engine for {model_path}: {reason}. Hint: the settings it used "
                f"are rollout.max_model_len={max_model_len}, rollout.kv_cache_gib={kv_cache_gib}, "
                f"model.dtype={dtype}; vLLM's log above may say more.") from err
        self.max_model_len = max_model_len

    def generate(self, prompts: Sequence[list[int]], n: int, max_tokens: int | Sequence[int], temperature: float,
                 top_k_logprobs: int = 0, progress: bool = False,
                 stop: Sequence[str] | None = None, min_tokens: int = 0) -> list[list[Completion]]:
        """`n` completions for each prompt (token ids); `max_tokens` for all or one per prompt. Randomness
        comes from the engine's seed: vLLM's CPU sampler rejects per-request seeds ("CPU Generator does not
        use offset"). `stop`: strings that end a completion; it keeps the stop string, and its token ids end
        with the token that completed it (vLLM drops any later ones), e.g. one reasoning step. `min_tokens`: no
        end of turn before this many tokens (capped at each prompt's budget), for benchmarks at equal length."""
        from vllm import SamplingParams

        budgets = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
        too_long = [i for i, (p, m) in enumerate(zip(prompts, budgets)) if len(p) + m > self.max_model_len or m < 1]
        if too_long:
            i = too_long[0]
            raise UserError(
                f"prompt {i} has {len(prompts[i])} tokens; with rollout.max_tokens={budgets[i]} it exceeds "
                f"the engine's max_model_len={self.max_model_len}. Hint: raise rollout.max_model_len or "
                f"shorten the prompts."
            )

        stops = {"stop": list(stop), "include_stop_str_in_output": True} if stop else {}

        def sampling(tokens: int):
            return SamplingParams(n=n, temperature=temperature, max_tokens=tokens, min_tokens=min(min_tokens, tokens),
                                  logprobs=top_k_logprobs, **stops)

        params = sampling(max_tokens) if isinstance(max_tokens, int) else [sampling(m) for m in budgets]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=progress)
        return [[_to_completion(c, top_k_logprobs) for c in out.outputs] for out in outputs]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights in place. Pass the full state_dict: with tied embeddings
        named_parameters() omits lm_head.weight and vLLM would keep its old head."""
        runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
        runner.reload_weights(weights_iterator=iter(named_tensors))
        self.llm.reset_prefix_cache()


def _to_completion(c, top_k: int) -> Completion:
    ids = list(c.token_ids)
    logprobs = [float(pos[tok].logprob) for pos, tok in zip(c.logprobs, ids)]
    top = top_ids = None
    if top_k:  # vLLM adds the sampled token to the top k; keep the ranks 1..k
        top = [[lp.logprob for lp in sorted(pos.values(), key=lambda lp: lp.rank) if lp.rank <= top_k]
               for pos in c.logprobs]
        top_ids = [[tok for tok, lp in sorted(pos.items(), key=lambda item: item[1].rank) if lp.rank <= top_k]
                   for pos in c.logprobs]
    return Completion(token_ids=ids, logprobs=logprobs, text=c.text, finished=c.finish_reason == "stop",
                      top_logprobs=top, top_token_ids=top_ids)
