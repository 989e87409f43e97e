"""One learner update on a fixed batch of 8 episodes, split over however many ranks launched it; prints the
statistics as the trainer logs them (each rank's value, then the mean over ranks) and how much of the
frozen reference model this rank holds.

    python tests/scripts/learner_ranks.py MODEL_DIR ZERO_STAGE [SHARD_REFERENCE]                    (one rank)
    deepspeed --num_gpus 2 tests/scripts/learner_ranks.py MODEL_DIR ZERO_STAGE [SHARD_REFERENCE]  (two ranks)
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def full_bytes(module) -> int:
    """Parameter bytes of the whole model (`ds_numel`: a ZeRO-3 parameter's full size)."""
    return sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in module.parameters())


def main() -> None:
    import torch
    from transformers import AutoTokenizer

    from bench.reference_memory import resident_bytes, shut_down
    from engine.algorithms import TurnWeights
    from engine.batch import collate
    from engine.distributed import init_distributed, reduce_mean
    from engine.learner import Learner
    from rollout.service import share
    from tests.test_episodes import _episode

    model_dir, zero_stage, *shard = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    zero_stage, shard_reference = int(zero_stage), bool(int(shard[0])) if shard else True
    rank, world = init_distributed()
    tok = AutoTokenizer.from_pretrained(model_dir)
    answers = ["Final Answer: 5", "1+2=3. Final Answer: 13", "Final Answer: 7", "x", "Final Answer: 55555", "9",
               "Final Answer: 12", "3*4=12"]
    episodes = [_episode(tok, f"{i}+{i}=?", answers[i], answers[-1 - i]) for i in range(8)]
    adv1 = torch.tensor([1.0, -0.5, 0.25, 2.0, -1.0, 0.5, 0.75, -2.0])
    adv2 = torch.tensor([-1.0, 0.5, 1.5, -0.25, 0.0, 1.0, -0.75, 0.25])
    mine = share(list(range(8)), rank, world)
    batch = collate([episodes[i] for i in mine], tok.pad_token_id)
    learner = Learner(model_dir, zero_stage=zero_stage, lr=1e-3, grad_clip=1e6, episodes_per_rank=len(mine),
                      micro_batch_size=2, shard_reference=shard_reference)
    # The reference is the base model: KL is 0 until the policy moves, so take one update first.
    weights = TurnWeights(pg=(1.0, 1.0), kl=(0.1, 0.1))
    learner.update(batch, [adv1[mine], adv2[mine]], weights, "k2")
    update = learner.update(batch, [adv1[mine], adv2[mine]], weights, "k2")
    assert len(update.kl_turns) == 2
    rank_stats = {"loss": update.loss, "kl_t1": update.kl_turns[0], "kl_t2": update.kl_turns[1]}
    logged = reduce_mean(rank_stats)  # what train_step hands the logger
    if rank == 0:
        print("RESULT " + json.dumps({"world": world, "logged": logged, "grad_norm": update.grad_norm,
                                      "reference_bytes": resident_bytes(learner.reference),
                                      "policy_bytes": resident_bytes(learner.engine.module),
                                      "full_bytes": full_bytes(learner.reference)}), flush=True)
    shut_down()  # both ranks leave together, skipping a teardown that sometimes aborts


if __name__ == "__main__":
    main()
