"""Weight-sync check, run as its own process (vLLM and the process group want a fresh interpreter).

Takes 3 learner updates with large random advantages (so the weights really move) and syncs the
weights into vLLM after each; prints JSON with the log-prob mismatch measured at each update, vLLM's
reported log-probs against a plain full-logits forward at the sampling temperature, and the mismatch
after a sync that leaves out the tied `lm_head.weight`.

    python tests/scripts/sync_check.py MODEL_DIR ZERO_STAGE TEMPERATURE
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def plain_logprobs(model, batch, temperature: float):
    """[B, T] log-prob of each token given its prefix from full logits / T (0 at position 0)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    # greedy (T = 0) reports the raw model
    lp = (logits / (temperature or 1.0)).log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    return torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.ops.scoring import grid, sampling_temperature, targets_of
    from engine.runtime.distributed import init_distributed
    from engine.tasks.data import load_problems
    from engine.update.algorithms import TurnWeights
    from engine.update.batch import collate
    from engine.update.learner import Learner
    from rollout.episodes import sample_episodes
    from rollout.vllm_engine import RolloutEngine

    model_dir, zero_stage, temperature = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    init_distributed()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    engine = RolloutEngine(model_dir, max_model_len=256, seed=0)
    learner = Learner(model_dir, zero_stage=zero_stage, lr=3e-3, grad_clip=1.0, episodes_per_rank=8,
                      micro_batch_size=4)
    problems = load_problems("builtin:arith")[:2]
    mismatches = []
    for _ in range(3):
        episodes = sample_episodes(engine, tok, problems, n=4, max_tokens=24, temperature=temperature,
                                   instruction="Check your answer and fix any mistake.")
        batch = collate(episodes, tok.pad_token_id)
        adv = torch.randn(len(episodes)) * 5
        stats = learner.update(batch, [adv, -adv], TurnWeights(pg=(1.0, 1.0), kl=(0.0, 0.0)), "k2",
                               temperature=temperature)
        mismatches.append(stats.logprob_mismatch)
        engine.load_weights(learner.full_state_dict().items())
    def sample():
        return collate(sample_episodes(engine, tok, problems, n=4, max_tokens=24, temperature=temperature,
                                       instruction="Check your answer and fix any mistake."), tok.pad_token_id)

    def max_diff(lp, batch):
        sampled = batch.response_mask > 0
        return (lp - batch.rollout_logprobs).abs()[sampled].max().item()

    # vLLM's log-probs are those of the tempered policy it sampled from: a plain forward says so.
    plain = AutoModelForCausalLM.from_pretrained(model_dir)
    state = learner.full_state_dict()
    plain.load_state_dict(state)
    fresh = sample()
    tempered_diff = max_diff(plain_logprobs(plain, fresh, temperature), fresh)
    raw_diff = max_diff(plain_logprobs(plain, fresh, 1.0), fresh)
    # vLLM's top-2 probabilities against the learner's scoring pass, on the same tokens.
    prefixes = batch.input_ids[:4, :8].tolist()
    completions = engine.generate(prefixes, n=2, max_tokens=16, temperature=temperature, top_k_logprobs=2)
    top2_diff = 0.0
    for prompt, comps in zip(prefixes, completions):
        for c in comps:
            ids = torch.tensor([prompt + c.token_ids])
            with sampling_temperature(learner.policy, temperature):
                stats = learner.score_ids(ids)
            vllm_top = torch.tensor(c.top_logprobs).exp()
            mine = torch.stack([stats.p_top1[0, 8:], stats.p_top2[0, 8:]], dim=-1)
            top2_diff = max(top2_diff, (vllm_top - mine).abs().max().item())
    # How far the weights moved: the base (reference) model's log-probs on the last batch.
    with torch.no_grad(), sampling_temperature(learner.reference_lm, temperature):  # as vLLM's, tempered
        ref_lp = grid(learner.reference(batch.input_ids, batch.attention_mask)[0], targets_of(batch.attention_mask))
    sampled = batch.response_mask > 0
    drift = (ref_lp - batch.rollout_logprobs).abs()[sampled].max().item()
    tied = learner.policy.config.tie_word_embeddings
    # One more update, pushed without the tied head: vLLM's reload does not fill it from embed_tokens, so
    # its head keeps the previous weights.
    learner.update(fresh, [adv, -adv], TurnWeights(pg=(1.0, 1.0), kl=(0.0, 0.0)), "k2",
                   temperature=temperature)
    state = learner.full_state_dict()
    plain.load_state_dict(state)
    engine.load_weights((k, v) for k, v in state.items() if k != "lm_head.weight")
    headless = sample()
    without_head = max_diff(plain_logprobs(plain, headless, temperature), headless)
    print("RESULT " + json.dumps({"mismatch_per_update": mismatches, "drift_from_base": drift, "tied": tied,
                                  "top2_max_diff": top2_diff, "tempered_max_diff": tempered_diff,
                                  "raw_max_diff": raw_diff, "mismatch_without_lm_head": without_head}))


if __name__ == "__main__":
    main()
