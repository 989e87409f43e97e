"""The run configuration's schema: one dataclass per section, each field with its default and a comment.

engine/config/loading.py loads YAML files and `key=value` overrides onto it and checks the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from engine.tasks.judge import JUDGE_LABELS, JUDGE_TEMPLATE
from engine.tasks.steps import DEFAULT_DELIMITER, DEFAULT_STOPS


@dataclass
class LoraSettings:
    r: int = 0  # adapter rank; 0: full fine-tuning (no adapters)
    alpha: float = 16.0  # the adapters' output is scaled by alpha / r
    dropout: float = 0.0  # on the adapters' input while training (> 0: the learner scores a noisier policy than vLLM's)
    # the Linear layers that get adapters (names or name suffixes); all-linear: every one except the output head
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class WarmupSettings:
    """A supervised warm-up on the built-in task's worked answers (train and validation, never eval), run once on model.path and
    cached (engine/models/warmup.py): for a model with no task it can partly do. Turns are ChatML: "47+85=?" ->
    "7+5=12, 4+8+1=13. Final Answer: 132", then the correction instruction -> a second answer."""
    steps: int = 0  # optimizer steps; 0: no warm-up (model.path is used as it is)
    lr: float = 3e-5  # peak AdamW learning rate (short linear warm-up, then cosine to 0)
    batch_size: int = 16  # episodes per step
    seed: int = 0  # draws the episodes (and their slips)
    p_slip_t1: float = 0.0  # share of turn-1 answers with an injected slip (0: gold worked answers only)
    p_fix_t2: float = 0.0  # share of slipped turn-1 answers that turn 2 fixes (the rest repeat the slip)
    p_break_t2: float = 0.0  # share of right turn-1 answers that turn 2 breaks (0: turn 2 repeats the right answer)


@dataclass
class ModelConfig:
    # builtin:tiny-arith (built on first use) | builtin:tiny-arith-judge | builtin:smollm2-135m-instruct | a .gguf
    # file | a local Hugging Face causal-LM folder | a hub id (from the local hub cache; rank 0 downloads it
    # unless HF_HUB_OFFLINE=1)
    path: str = "builtin:tiny-arith"
    dtype: str = "float32"  # the learner's and vLLM's weights: float32 | bfloat16
    # run Python code shipped in the model folder (config.json auto_map), in transformers and vLLM; off: refused
    trust_remote_code: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)  # LoRA through PEFT (model.lora.r > 0)
    warmup: WarmupSettings = field(default_factory=WarmupSettings)  # supervised warm-up before RL (steps > 0)


@dataclass
class DataConfig:
    # a JSONL, Parquet or Arrow file, a `datasets` folder (save_to_disk; a DatasetDict as folder:split), or a
    # built-in split; rows need a prompt and, optionally, a gold answer
    train: str = "builtin:arith"
    eval: str = "builtin:arith-eval"  # the held-out set evaluated before, during and after training (same forms)
    prompt_key: str = "prompt"  # the field / column holding the prompt
    answer_key: str = "answer"  # the field / column holding the gold answer (GSM8K's "#### N" and \boxed{} are read)
    prompt_template: str = "{prompt}"  # every prompt (train and eval) goes in at {prompt}; a literal brace: {{ or }}
    # a prompt whose longest episode cannot fit rollout.max_model_len: error (at start-up, naming file:line) |
    # skip (dropped and counted)
    overlong: str = "error"


@dataclass
class TrainConfig:
    steps: int = 160  # RL steps, one optimizer step each
    seed: int = 0  # seeds the prompt order, vLLM and torch
    lr: float = 1e-4  # AdamW learning rate
    output_dir: str = "runs/default"  # the run directory: config.yaml, train.log, tb/, checkpoints/, summary.json
    save_every: int = 40  # checkpoint every N steps and at the end; 0 = never
    keep_checkpoints: int = 2  # the newest N complete checkpoints are kept
    # auto: continue from the latest complete checkpoint in output_dir (nothing to do if the run finished) |
    # never: start over
    resume: str = "auto"
    grad_clip: float = 1.0  # gradient-norm clip
    micro_batch_size: int = 64  # sequences per forward/backward on one rank; gradients accumulate to one step


@dataclass
class EvalConfig:
    every: int = 40  # periodic evaluation every N steps; 0 = only before and after training
    problems: int = 1000  # held-out problems in each evaluation
    temperature: float = 1.0  # sampling temperature of evaluation
    samples_logged: int = 8  # episodes per step written to samples.jsonl


@dataclass
class RolloutConfig:
    n: int = 4  # samples per prompt at turn 1, the group of the baseline (each gets its corrections)
    prompts_per_step: int = 16  # prompts per step, split across ranks
    max_tokens: int = 48  # the most tokens of one turn
    min_tokens: int = 0  # no end of turn before this many tokens (sample_step's turns; off-policy: benchmarks only)
    turns: int = 2  # K: turn 1 answers, turns 2..K correct the turn before (1: single-turn RL)
    # sampling temperature T: the learner scores logits / T in the loss, the IS weights and the mismatch check
    # (the self-rewards' confidence statistics stay the untempered model's)
    temperature: float = 1.0
    max_model_len: Optional[int] = None  # vLLM's context; null: the longest prompt's episode, within the model's positions
    kv_cache_gib: int = 1  # vLLM's CPU KV-cache size in GiB
    correction_instruction: str = "Check your answer and fix any mistake."  # the user message before each correction
    placement: str = "colocated"  # colocated: a vLLM engine on every rank | dedicated: rollout.workers ranks run only vLLM
    workers: int = 1  # with placement=dedicated: how many of the launch's ranks (the last ones) are rollout workers
    # rollout.async (a Python keyword, so added in base_config): with placement=dedicated, workers sample the
    # next steps' episodes while the learners train, at most max_staleness updates behind the policy.
    max_staleness: int = 1  # with rollout.async: a batch is at most this many updates behind (0: synchronous)
    is_cap: float = 2.0  # truncated importance sampling: weight min(pi/pi_rollout, is_cap) on stale episodes
    worker_timeout_s: float = 600.0  # learners give up on a silent rollout worker after this long
    sync_bucket_mb: int = 64  # weights go to dedicated workers in buckets of this size


@dataclass
class AlgoConfig:
    kind: str = "pg"  # the objective (engine/objectives): pg (SCoRe's policy gradient) | dpo (preference rounds)
    stage1_steps: int = 150  # steps of SCoRe Stage I before Stage II
    alpha: float = 2.0  # correction bonus in Stage II: turn k >= 2 gets r_k + alpha * (r_k - r_(k-1))
    beta1: float = 0.05  # KL weight on every turn in Stage II and on the last turn in Stage I
    beta2: float = 0.5  # strong KL weight on every turn before the last in Stage I
    kl_estimator: str = "k2"  # Schulman's estimators of KL(pi || pi_ref), as a per-token loss: k1 | k2 | k3
    advantage: str = "rloo"  # reinforce (no baseline) | rloo (leave-one-out group mean) | grpo (group mean and std)
    # a turn's return: own (Stage I: none before the last turn; Stage II: its own) | trajectory (its own plus every
    # later turn's, REINFORCE on the whole episode)
    turn1_credit: str = "own"
    # With token-level rewards (reward.kind=seq2seq), the baseline a token's return is compared with: the other
    # samples' mean per-turn return (turn_mean) or their mean return at the same token position (position).
    token_baseline: str = "turn_mean"


@dataclass
class RewardConfig:
    kind: str = "confidence"  # gold | confidence | self_certainty | agreement | majority | mix | seq2seq | a plugin's
    # files (.py, relative to the working directory) or modules imported at start-up on every rank; they
    # register rewards with `from rewards import register` (rewards/plugins.py, examples/reward_plugin.py)
    plugins: list[str] = field(default_factory=list)
    metric: str = "disparity"  # confidence metric: disparity | prob | neg_entropy | agreement (turn-level)
    scope: str = "answer"  # confidence over the final-answer tokens | every sampled token of the turn (response)
    reduction: str = "mean"  # over the scope's tokens: mean | min | geomean (exp of the mean log-confidence)
    vote_weight: str = "uniform"  # agreement: one vote per sample | confidence (vote_metric over scope, reduction)
    vote_metric: str = "prob"  # with vote_weight=confidence: prob | disparity (both in [0, 1])
    weights: dict[str, float] = field(default_factory=dict)  # for kind=mix: {reward kind: weight}
    probe_prompt: str = " So the answer is"  # RLSF fallback for turns with no answer format
    probe_tokens: int = 8  # greedy tokens of the fallback probe; 0 = no fallback
    probe_min_tokens: int = 1  # shortest probed answer run (it also needs a letter or digit, not just " " or ".")
    nonfinite: str = "error"  # a NaN/inf reward: error | skip (the episode gets no policy gradient; counted)
    # kind=seq2seq (token-level rewards from a rewriting reward model, `python -m engine.train_rm`):
    model: str = ""  # the reward model's Hugging Face folder (rm.output_dir/model after train_rm)
    rewrite_instruction: str = "Check your answer and fix any mistake."  # asks the reward model to rewrite
    keep: float = 1.0  # reward of a response token the rewrite keeps
    change: float = -1.0  # reward of a response token the rewrite changes or deletes (or inserts before)
    identical: float = 1.0  # every token's reward when the rewrite is the response itself (sequence-level)
    rewrite_max_tokens: int = 64  # the longest rewrite the reward model may produce


@dataclass
class GuardConfig:
    min_entropy: float = 0.0  # alarm when train/entropy (nats per token) falls below; 0 = off
    patience: int = 0  # alarm when the train reward rises and eval acc_t2 falls over this many evals; 0 = off
    action: str = "warn"  # warn | stop (saves the policy, ends training early, evaluates, writes the summary)
    # the labelled problems the accuracy check evaluates (eval.problems of them) with guard.patience > 0, so the
    # set the results are reported on does not decide when training stops; null: data.eval's validation split
    # where one is known (builtin:arith-eval -> builtin:arith-val), else data.eval itself (start-up says so)
    data: Optional[str] = None


@dataclass
class LogConfig:
    text_every: int = 20  # TensorBoard text summary of a few episodes every N steps; 0 = never
    text_episodes: int = 3  # episodes in each text summary
    # terminal: info = progress lines and real problems (known-benign library messages hidden, see
    # engine/runtime/console.py) | debug = every line. The run directory's train.log keeps every line either way.
    level: str = "info"


@dataclass
class LearnerConfig:
    logprob_impl: str = "auto"  # fused log-prob head: auto (triton on a GPU, else chunked) | naive | chunked | triton
    packing: bool = True  # forwards on the sequences packed side by side, no padding (engine/ops/packing.py)
    # an update's micro-batches: up to this many token slots each, longest rows first (null: micro_batch_size rows)
    max_tokens_per_micro_batch: Optional[int] = None
    # recompute each decoder layer in the backward instead of keeping its activations: less memory on long
    # episodes for about a third more update time (TRL's GRPOConfig turns this on by default)
    gradient_checkpointing: bool = False


@dataclass
class DPOConfig:
    """algo.kind=dpo: rounds of (sample with the current policy, build pairs, train on them)."""
    beta: float = 0.1  # DPO's inverse temperature on the log-ratio margin
    rounds: int = 2  # preference rounds: sample, build pairs, train, evaluate, checkpoint
    prompts_per_round: int = 64  # training prompts sampled (and turned into pairs) each round
    pairs_per_round: int = 256  # at most this many of the round's pairs train (a seeded shuffle picks them)
    batch_pairs: int = 16  # pairs per optimizer step, all ranks
    epochs: int = 1  # passes over the round's pairs
    # previous: round r trains M(r) against M(r-1), the policy that built its pairs (iterative DPO, as EVOLVE and
    # PSRLM do; for a single round it is the base model) | base: every round against the run's starting model
    reference: str = "previous"


@dataclass
class PairsConfig:
    """Preference pairs from the engine's own rollouts, scored by reward.kind (engine/objectives/pairs/builders.py)."""
    # rlsf (CoT-decoded traces ranked by confidence) | evolve (refinement + direct pairs) | psrlm (step pairs
    # ranked by the policy's own pairwise judge; reads no reward; steps.*, judge.*)
    kind: str = "evolve"
    threshold: float = 0.9  # rlsf: a trace is preferred only when its confidence reaches this, in [0, 1]
    branches: int = 4  # rlsf: CoT decoding's top-k first tokens, one greedy trace each
    direct: bool = True  # evolve: also pair the turn-1 samples of a prompt by their rewards


@dataclass
class StepsConfig:
    """pairs.kind=psrlm: answers are written and judged step by step (engine/tasks/steps.py, engine/objectives/pairs/psrlm.py)."""
    # a regex; each match ends a step and stays with it (built-in task: one step per column, then the answer)
    delimiter: str = DEFAULT_DELIMITER
    # literal strings vLLM stops a sampled step on (each must match the delimiter; a sample running past a
    # regex-only delimiter is cut at its first match)
    stops: list[str] = field(default_factory=lambda: list(DEFAULT_STOPS))
    max_steps: int = 4  # steps per answer at most (the built-in task's answers have 3)
    candidates: int = 4  # next steps sampled per prefix (identical samples count once); >= 2 with psrlm
    max_step_tokens: int = 24  # tokens of one step at most (the whole answer stays within rollout.max_tokens)


@dataclass
class JudgeConfig:
    """pairs.kind=psrlm: the policy judges two candidate next steps, asked in both orders (engine/tasks/judge.py)."""
    # the question; {problem}, {prefix} (steps so far), {a}, {b} (the candidates), {label_a}, {label_b}.
    # builtin:tiny-arith-judge was pre-trained on the default: change it only with a model that learns it.
    template: str = JUDGE_TEMPLATE
    labels: list[str] = field(default_factory=lambda: list(JUDGE_LABELS))  # the answers naming {a} and {b}
    # greedy tokens of the answer, whose last word is the verdict (tiny-arith-judge: the step, then the label)
    max_tokens: int = 24
    eval_pairs: int = 200  # held-out step pairs of the built-in task for judge/accuracy each round; 0 = none


@dataclass
class RMConfig:
    """`python -m engine.train_rm`: a sequence-to-sequence reward model (arXiv 2409.00162), trained by sequence
    MLE to rewrite a response into the preferred one; reward.kind=seq2seq loads its rm.output_dir/model."""
    # builder: sample pairs with the base policy now (pairs.kind, ranked by rm.reward) | a JSONL file of
    # {"prompt", "chosen", "rejected"} (chosen_text/rejected_text, as the DPO rounds write, also read)
    pairs: str = "builder"
    reward: str = "gold"  # the registered reward that ranks the builder's pairs (label-free ones allowed)
    prompts: int = 512  # training prompts the builder samples pairs from (split across ranks)
    heldout_pairs: int = 64  # about this many pairs (whole prompts) stay out of training for the rewrite check
    epochs: int = 1  # passes over the training examples (two per pair: rejected -> chosen, chosen -> chosen)
    batch_size: int = 32  # examples per optimizer step, all ranks (divisible by the ranks)
    lr: float = 3e-4  # built-in task, held out: 3e-4 fixes 0.95 and keeps 0.95; 1e-3 only 0.85 and 0.91
    save_every: int = 100  # checkpoint every N steps (and on SIGINT/SIGTERM); 0 = only on a signal
    eval_every: int = 0  # held-out rewrite check every N steps; 0 = before and after training only
    output_dir: str = "runs/seq2seq_rm/rm"  # pairs.jsonl, checkpoints/, tb/, model/, summary.json


@dataclass
class DeepSpeedSection:
    zero_stage: int = 0  # ZeRO stage 0-3
    shard_reference: bool = True  # at ZeRO-3, shard the frozen reference too (false: a full copy on every rank)
    # ZeRO-3's bounds on gathered parameters (DeepSpeed's stage3_* settings, its defaults). A gathered
    # parameter is kept while it will be reused within max_reuse_distance parameters: at the default 1e9 a
    # model under 1e9 parameters keeps every gathered parameter until the step ends.
    max_live_parameters: int = 1_000_000_000  # at most this many gathered parameters at once
    max_reuse_distance: int = 1_000_000_000  # lower it to save memory (docs/architecture.md, Multi-rank)
    prefetch_bucket_size: int = 50_000_000  # parameters gathered ahead of use
    # elements per gradient reduce-scatter bucket at ZeRO-3: up to this many float32 gradients per rank
    reduce_bucket_size: int = 500_000_000
    # ZeRO-3: parameters of at most this many elements stay whole on every rank (stage3_param_persistence_threshold)
    param_persistence_threshold: int = 100_000


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    steps: StepsConfig = field(default_factory=StepsConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    rm: RMConfig = field(default_factory=RMConfig)


def base_config() -> DictConfig:
    """The defaults: the dataclasses above plus rollout.async, whose name Python reserves."""
    cfg = OmegaConf.structured(Config)
    with open_dict(cfg.rollout):
        cfg.rollout["async"] = False
    return cfg
