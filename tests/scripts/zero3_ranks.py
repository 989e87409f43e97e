"""A ZeRO-3 learner over the ranks that launched it: each rank's partition report (policy and reference), then
scoring and evaluation with uneven shares per rank, which must finish (under ZeRO-3 every forward gathers the
sharded weights with every rank). A hang ends the rank after HANG_S seconds with every thread's stack.

    deepspeed --num_gpus 2 tests/scripts/zero3_ranks.py MODEL_DIR PERSISTENCE_THRESHOLD
"""

import faulthandler
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HANG_S = 150


def main() -> None:
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    import torch
    from transformers import AutoTokenizer

    from bench.reference_memory import shut_down
    from engine.evaluate import eval_metrics
    from engine.runtime.distributed import gather_objects, init_distributed
    from engine.update.batch import collate
    from engine.update.learner import Learner
    from tests.test_episodes import _episode

    model_dir, threshold = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    rank, world = init_distributed()
    tok = AutoTokenizer.from_pretrained(model_dir)
    learner = Learner(model_dir, zero_stage=3, lr=1e-3, grad_clip=1.0, episodes_per_rank=4, micro_batch_size=2,
                      zero3={"stage3_param_persistence_threshold": int(threshold)})
    answers = ["Final Answer: 5", "1+2=3. Final Answer: 13", "Final Answer: 7", "x", "Final Answer: 55555"]
    episodes = [_episode(tok, f"{i}+{i}=?", answers[i], answers[-1 - i]) for i in range(5)]
    # Every rank scores all five (3 micro-batches of 2 each), then only its share: 3 rows (2 micro-batches)
    # on rank 0, 2 rows (1) on rank 1; the share's rows must score as in the whole batch.
    whole = learner.score(collate(episodes, tok.pad_token_id))
    mine = list(range(5))[rank::world]
    share = learner.score(collate([episodes[i] for i in mine], tok.pad_token_id))
    width = share.logprob.shape[1]
    share_error = (share.logprob - whole.logprob[mine, :width]).abs().max().item()
    # The evaluation's gather: eval.problems=5 and eval.problems=1 (rank 1 has no episode at all).
    uneven = eval_metrics(episodes[rank::world], tok)
    lone = eval_metrics(episodes[:1][rank::world], tok)
    reports = gather_objects({"policy": asdict(learner.partition),
                              "reference": asdict(learner.reference_partition)})
    if rank == 0:
        print("RESULT " + json.dumps({"world": world, "reports": reports, "share_error": share_error,
                                      "n_uneven": uneven["n"], "n_lone": lone["n"],
                                      "finite": all(torch.isfinite(torch.tensor(v)).item()
                                                    for v in (uneven["ece_t1"], lone["acc_t1"]))}), flush=True)
    faulthandler.cancel_dump_traceback_later()
    shut_down()  # both ranks leave together, skipping a teardown that sometimes aborts


if __name__ == "__main__":
    main()
