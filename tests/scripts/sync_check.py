"""Weight-sync check, run as its own process (vLLM and the process group want a fresh interpreter).

Takes 3 learner updates with large random advantages (so the weights really move) and syncs the
weights into vLLM after each; prints JSON with the log-prob mismatch measured at each update.

    python tests/scripts/sync_check.py MODEL_DIR ZERO_STAGE TEMPERATURE
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    import torch
    from transformers import AutoTokenizer

    from engine.algorithms import TurnWeights
    from engine.batch import collate
    from engine.distributed import init_distributed
    from engine.learner import Learner
    from engine.scoring import grid, targets_of
    from rollout.data import load_problems
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
        stats = learner.update(batch, adv, -adv, TurnWeights(pg_turn1=1.0, kl_turn1=0.0, kl_turn2=0.0), "k2")
        mismatches.append(stats.logprob_mismatch)
        engine.load_weights(learner.full_state_dict().items())
    # vLLM's top-2 probabilities against the learner's scoring pass, on the same tokens.
    prefixes = batch.input_ids[:4, :8].tolist()
    completions = engine.generate(prefixes, n=2, max_tokens=16, temperature=temperature, top_k_logprobs=2)
    top2_diff = 0.0
    for prompt, comps in zip(prefixes, completions):
        for c in comps:
            ids = torch.tensor([prompt + c.token_ids])
            stats = learner.score_ids(ids)
            vllm_top = torch.tensor(c.top_logprobs).exp()
            mine = torch.stack([stats.p_top1[0, 8:], stats.p_top2[0, 8:]], dim=-1)
            top2_diff = max(top2_diff, (vllm_top - mine).abs().max().item())
    # How far the weights moved: the base (reference) model's log-probs on the last batch.
    with torch.no_grad():
        ref_lp = grid(learner.reference(batch.input_ids, batch.attention_mask)[0], targets_of(batch.attention_mask))
    sampled = (batch.turn1_mask + batch.turn2_mask) > 0
    drift = (ref_lp - batch.rollout_logprobs).abs()[sampled].max().item()
    tied = learner.policy.config.tie_word_embeddings
    print("RESULT " + json.dumps({"mismatch_per_update": mismatches, "drift_from_base": drift, "tied": tied,
                                  "top2_max_diff": top2_diff}))


if __name__ == "__main__":
    main()
