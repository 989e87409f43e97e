"""How the learner gets episodes, whatever the placement. Both kinds offer the same calls:

    request(step, prompts)   the step's prompts (all ranks'); a dedicated worker starts at once
    collect(step)            this learner's share of the step's episodes; `sampled_version` is then the
                             weight version (updates applied) of the policy that sampled them
    push_weights(version)    the learner's current weights to the rollout engine(s)
    eval_episodes(problems)  this learner's share of one turn-1 + correction per problem
    stop()

`LocalRollouts`: this rank's own vLLM engine (colocated). `RemoteRollouts`: rollout workers on other
ranks (dedicated): learner 0 broadcasts commands and weights, each worker sends its episodes to every
learner, and a learner takes its contiguous share (a prompt's n samples stay together).
"""

from __future__ import annotations

import dataclasses
import time

from engine.base.errors import UserError
from engine.runtime.distributed import reduce_max
from rollout.answer_probe import probe_answer_spans
from rollout.episodes import sample_episodes
from rollout.weight_sync import send_weights, weight_spec


class WorkerLost(UserError):
    """A rollout worker stopped answering; the message names its rank."""


def sample_step(engine, tokenizer, cfg, problems, progress: bool = False):
    """Turn-1 samples, rollout.turns - 1 corrections each and RLSF's answer probe for `problems`."""
    episodes = sample_episodes(engine, tokenizer, problems, n=cfg.rollout.n, max_tokens=cfg.rollout.max_tokens,
                               temperature=cfg.rollout.temperature, instruction=cfg.rollout.correction_instruction,
                               turns=cfg.rollout.turns, progress=progress, min_tokens=cfg.rollout.min_tokens)
    probe_answer_spans(engine, tokenizer, episodes, cfg.reward.probe_prompt, cfg.reward.probe_tokens,
                       cfg.reward.probe_min_tokens)
    return episodes


def sample_eval(engine, tokenizer, cfg, problems, progress: bool):
    return sample_episodes(engine, tokenizer, problems, n=1, max_tokens=cfg.rollout.max_tokens,
                           temperature=cfg.eval.temperature, instruction=cfg.rollout.correction_instruction,
                           turns=cfg.rollout.turns, progress=progress)


def share(items: list, part: int, parts: int) -> list:
    """The `part`-th of `parts` contiguous blocks (len(items) divisible by parts)."""
    size = len(items) // parts
    return items[part * size:(part + 1) * size]


class LocalRollouts:
    def __init__(self, engine, tokenizer, cfg, learner, rank: int, world: int):
        self.engine, self.tokenizer, self.cfg, self.learner = engine, tokenizer, cfg, learner
        self.rank, self.world = rank, world
        self.pending = {}
        self.pushed = 0  # the weight version the engine holds (it starts from the model folder)
        self.idle_s = 0.0  # the learner never waits for a colocated engine
        self.last_rollout_s = 0.0  # seconds the last collected batch took to sample
        self.sampled_version = 0  # the weight version that sampled the last collected batch

    def request(self, step: int, prompts: list) -> None:
        self.pending[step] = share(prompts, self.rank, self.world)

    def collect(self, step: int) -> list:
        started = time.perf_counter()
        episodes = sample_step(self.engine, self.tokenizer, self.cfg, self.pending.pop(step))
        self.last_rollout_s = time.perf_counter() - started
        self.sampled_version = self.pushed  # a colocated engine samples when collected, never ahead
        return episodes

    def push_weights(self, version: int) -> None:
        if version != self.pushed:  # every rank calls this (ZeRO-3 gathers the full weights)
            self.engine.load_weights(self.learner.full_state_dict().items())
            self.pushed = version

    def eval_episodes(self, problems: list) -> list:
        return sample_eval(self.engine, self.tokenizer, self.cfg, list(problems[self.rank::self.world]),
                           progress=self.rank == 0)

    def stop(self) -> None:
        pass


class RemoteRollouts:
    def __init__(self, channels, placement, cfg, learner):
        self.channels, self.placement, self.cfg, self.learner = channels, placement, cfg, learner
        self.is_root = placement.rank == 0
        self.pushed = 0  # the weight version the workers hold (they start from the same folder)
        self.idle_s = 0.0  # time spent waiting for the workers' episodes
        self.last_rollout_s = 0.0  # the slowest worker's sampling time for the last collected batch
        self.sampled_version = 0  # the oldest weight version among the workers that sampled the last batch
        self.early = {}  # (worker rank, what) -> a message that came before the one being waited for
        self.failure = None  # what this learner saw when a worker stopped answering: nothing more is sent
        spec = weight_spec(learner.policy)
        if self.is_root:
            self._command(spec)
        self._agree()

    # Learners fail together: each records what it saw (`self.failure`), then `_agree` max-reduces over the
    # learner group before any learner collective, and every learner raises WorkerLost.

    def request(self, step: int, prompts: list) -> None:
        if self.is_root:
            self._command(("rollout", step, prompts))

    def collect(self, step: int) -> list:
        episodes = self._gather(("rollout", step))
        self._agree()
        n = self.cfg.rollout.n
        mine = share(episodes, self.placement.rank, self.placement.learners)
        # Group ids restart on every worker: renumber so each prompt's n samples share one id.
        return [dataclasses.replace(e, group=i // n) for i, e in enumerate(mine)]

    def push_weights(self, version: int) -> None:
        if version == self.pushed:
            return
        if self.is_root:
            self._command(("weights", version))
        # Learner 0 stops broadcasting after a failure but keeps taking part in the ZeRO-3 gathers.
        send_weights(self.learner.policy, self.learner.zero_stage, self.is_root, self._broadcast_bucket,
                     self.cfg.rollout.sync_bucket_mb * 2**20)
        self._agree()
        self.pushed = version

    def eval_episodes(self, problems: list) -> list:
        if self.is_root:
            self._command(("eval", list(problems)))
        episodes = self._gather(("eval",))
        self._agree()
        return episodes[self.placement.rank::self.placement.learners]

    def stop(self) -> None:
        if self.is_root and self.failure is None:
            self._command(("stop",))

    def _command(self, command: tuple) -> None:
        if self.failure is None:
            try:
                self.channels.broadcast_object(command)
            except RuntimeError as err:
                self.failure = self._lost_message(err)

    def _broadcast_bucket(self, flat) -> None:
        if self.failure is None:
            try:
                self.channels.broadcast_tensor(flat)
            except RuntimeError as err:
                self.failure = self._lost_message(err)

    def _gather(self, what: tuple) -> list:
        """Every worker's episodes for `what`, in worker order. A worker answers commands in order, so a
        batch requested ahead can arrive before an evaluation's episodes: it waits in `self.early`."""
        started = time.perf_counter()
        episodes, seconds, versions = [], [0.0], []
        for worker in self.placement.worker_ranks:
            while self.failure is None and (worker, what) not in self.early:
                try:
                    message = self.channels.recv_object(worker)
                except RuntimeError as err:
                    self.failure = self._lost_message(err, worker)
                    break
                self.early[(worker, tuple(message["what"]))] = message
            if self.failure is not None:
                break
            message = self.early.pop((worker, what))
            episodes += message["episodes"]
            seconds.append(message["seconds"])
            versions.append(message["version"])
        self.idle_s += time.perf_counter() - started
        self.last_rollout_s = max(seconds)
        self.sampled_version = min(versions, default=self.sampled_version)
        return episodes

    def _agree(self) -> None:
        if reduce_max(float(self.failure is not None)):
            self.failure = self.failure or ("a rollout worker stopped answering (another learner saw it; its "
                                            "error line names the worker).")
            raise WorkerLost(self.failure)

    def _lost_message(self, err: RuntimeError, worker: int | None = None) -> str:
        # A failed receive names its sender; a failed broadcast is traced by the workers' heartbeats.
        silent = [worker] if worker is not None else self.channels.silent_workers()
        who = (f"rollout worker rank {', '.join(map(str, silent))}" if silent
               else f"a rollout worker (ranks {self.placement.worker_ranks})")
        cause = str(err).splitlines()[0][:300]
        return (f"{who} stopped answering ({cause}). Hint: its own log says why; rollout.worker_timeout_s="
                f"{self.cfg.rollout.worker_timeout_s} bounds the wait for a silent one. The same command resumes "
                f"from the last checkpoint.")
