"""A dedicated rollout worker: a vLLM engine that does what learner 0 broadcasts, in order:
("rollout", step, prompts) -> sample its block of the prompts and send the episodes, tagged with the
weight version that sampled them, to every learner;
("weights", version) -> stream the learner's weights into vLLM; ("eval", problems) -> one answer and
correction per problem of its slice; ("stop",) -> return."""

from __future__ import annotations

import time

from rollout.service import sample_eval, sample_step, share
from rollout.weight_sync import receive_weights


def serve(cfg, channels, placement, engine, tokenizer) -> None:
    index = placement.rank - placement.learners
    channels.start_heartbeat()
    spec = channels.broadcast_object()
    bucket_bytes = cfg.rollout.sync_bucket_mb * 2**20
    version = 0  # the weight version vLLM holds: 0 is the model folder, v the policy after v updates
    while True:
        command = channels.broadcast_object()
        kind = command[0]
        if kind == "stop":  # batches still in flight (requested ahead before an early stop) are not wanted
            channels.stop_heartbeat()
            return
        if kind == "weights":
            engine.load_weights(receive_weights(spec, bucket_bytes, channels.broadcast_tensor))
            version = command[1]
        elif kind == "rollout":
            _, step, prompts = command
            started = time.perf_counter()
            episodes = sample_step(engine, tokenizer, cfg, share(prompts, index, placement.workers))
            _send_to_learners(channels, placement, ("rollout", step), episodes, time.perf_counter() - started,
                              version)
        elif kind == "eval":
            started = time.perf_counter()
            episodes = sample_eval(engine, tokenizer, cfg, command[1][index::placement.workers], progress=False)
            _send_to_learners(channels, placement, ("eval",), episodes, time.perf_counter() - started, version)
        else:
            raise ValueError(f"unknown command {kind!r} from learner 0")


def _send_to_learners(channels, placement, what: tuple, episodes, seconds: float, version: int) -> None:
    message = {"what": what, "episodes": episodes, "seconds": seconds, "version": version}
    for learner in range(placement.learners):
        channels.send_object(message, learner)
