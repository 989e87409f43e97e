"""One learner update on a fixed batch of 8 episodes, split over however many ranks launched it; prints the
statistics as the trainer logs them (each rank's value, then the mean over ranks) and how much of the
frozen reference model this rank holds.

    python tests/scripts/learner_ranks.py MODEL_DIR ZERO_STAGE [SHARD_REFERENCE]                    (one rank)
    deepspeed --num_gpus 2 tests/scripts/learner_ranks.py MODEL_DIR ZERO_STAGE [SHARD_REFERENCE]  (two ranks)

--packing and --max-tokens N set the learner's packing and token budget (learner.max_tokens_per_micro_batch).
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
    from engine.runtime.distributed import init_distributed, reduce_mean
    from engine.update.algorithms import TurnWeights
    from engine.update.batch import collate
    from engine.update.learner import Learner
    from rollout.service import share
    from tests.test_episodes import _episode

    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    packing = "--packing" in args
    max_tokens = int(args[args.index("--max-tokens") + 1]) if "--max-tokens" in args else None
    args = [a for i, a in enumerate(args) if not a.startswith("--") and (i == 0 or args[i - 1] != "--max-tokens")]
    model_dir, zero_stage, *shard = args
    zero_stage, shard_reference = int(zero_stage), bool(int(shard[0])) if shard else True
    rank, world = init_distributed()
    tok = AutoTokenizer.from_pretrained(model_dir)
    answers = ["Final Answer: 5", "1+2=3. Final Answer: 13", "Final Answer: 7", "x", "Final Answer: 55555", "9",
               "Final Answer: 12", "3*4=12"]
    # prompts of growing length: the second rank's rows are longer, so a token budget splits them into more passes
    episodes = [_episode(tok, f"{10 ** i}+{i}=?", answers[i], answers[-1 - i]) for i in range(8)]
    adv1 = torch.tensor([1.0, -0.5, 0.25, 2.0, -1.0, 0.5, 0.75, -2.0])
    adv2 = torch.tensor([-1.0, 0.5, 1.5, -0.25, 0.0, 1.0, -0.75, 0.25])
    mine = share(list(range(8)), rank, world)
    batch = collate([episodes[i] for i in mine], tok.pad_token_id)
    learner = Learner(model_dir, zero_stage=zero_stage, lr=1e-3, grad_clip=1e6, episodes_per_rank=len(mine),
                      micro_batch_size=2, shard_reference=shard_reference, packing=packing,
                      max_tokens_per_micro_batch=max_tokens)
    # The reference is the base model: KL is 0 until the policy moves, so take one update first.
    weights = TurnWeights(pg=(1.0, 1.0), kl=(0.1, 0.1))
    learner.update(batch, [adv1[mine], adv2[mine]], weights, "k2")
    update = learner.update(batch, [adv1[mine], adv2[mine]], weights, "k2")
    assert len(update.kl_turns) == 2
    micro_batches = [len(learner.micro_batch_rows(collate([episodes[i] for i in share(list(range(8)), r, world)],
                                                           tok.pad_token_id))) for r in range(world)]
    rank_stats = {"loss": update.loss, "kl_t1": update.kl_turns[0], "kl_t2": update.kl_turns[1]}
    logged = reduce_mean(rank_stats)  # what train_step hands the logger
    if rank == 0:
        print("RESULT " + json.dumps({"world": world, "logged": logged, "grad_norm": update.grad_norm,
                                      "pad_frac": update.pad_frac, "micro_batches": micro_batches,
                                      "reference_bytes": resident_bytes(learner.reference),
                                      "policy_bytes": resident_bytes(learner.engine.module),
                                      "full_bytes": full_bytes(learner.reference)}), flush=True)
    shut_down()  # both ranks leave together, skipping a teardown that sometimes aborts


if __name__ == "__main__":
    main()
