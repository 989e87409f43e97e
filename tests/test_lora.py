"""LoRA through PEFT (model.lora.*): only the adapters train, the reference is the base model computed by the
policy's own network with the adapters off, vLLM and the saved folder get merged weights, and a LoRA run
trains, syncs, evaluates and resumes."""

import json
import re
import shutil
import sys

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.base.errors import UserError
from engine.ops.scoring import ScoringModel
from engine.runtime.distributed import init_distributed
from engine.update.algorithms import TurnWeights
from engine.update.batch import collate
from engine.update.learner import Learner
from tests.conftest import assert_weights_synced, run_script
from tests.test_episodes import _episode

LORA = OmegaConf.create({"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["all-linear"]})


def _batch(tok):
    answers = ["Final Answer: 5", "1+2=3. Final Answer: 13", "Final Answer: 7", "x"]
    return collate([_episode(tok, f"{i}+{i}=?", answers[i], answers[-1 - i]) for i in range(4)], tok.pad_token_id)


def _logprobs(model, batch):
    """Per-token log-probs of the batch's sampled tokens under a plain HF model (fused head installed)."""
    scoring = ScoringModel(model, "naive").eval()
    with torch.no_grad():
        return scoring(batch.input_ids, batch.attention_mask, scored=batch.response_mask > 0)[0]


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_adapters_train_the_reference_is_the_base_and_merged_weights_match(tiny_model_dir, tmp_path, zero_stage):
    init_distributed()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = _batch(tok)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base_lp = _logprobs(base, batch)
    learner = Learner(str(tiny_model_dir), zero_stage=zero_stage, lr=1e-2, grad_clip=1.0, episodes_per_rank=4,
                      micro_batch_size=4, lora=LORA)
    trained = {n for n, p in learner.policy.named_parameters() if p.requires_grad}
    assert trained and all("lora_A" in n or "lora_B" in n for n in trained)
    optimizer_params = sum(len(g["params"]) for g in learner.engine.optimizer.param_groups)
    assert optimizer_params <= len(trained)  # the optimizer holds no base weight (ZeRO-3 flattens the adapters)
    assert not any(p.requires_grad for n, p in learner.policy.named_parameters() if n not in trained)

    advantages = [torch.tensor([1.0, -0.5, 0.25, 2.0]), torch.tensor([-1.0, 0.5, 1.5, -0.25])]
    weights = TurnWeights(pg=(1.0, 1.0), kl=(0.1, 0.1))
    first = learner.update(batch, advantages, weights, "k2")
    assert first.reference_drift < 1e-5  # lora_B starts at zero: the policy is the base model
    second = learner.update(batch, advantages, weights, "k2")
    assert second.reference_drift > 1e-3 and second.kl_turns[0] > 0  # the adapters moved the policy

    with learner.scoring_temperature(0.5):  # applied once: policy and reference share the head
        assert learner.policy.get_output_embeddings().scale == learner.reference_lm.get_output_embeddings().scale == 2.0
    with learner.scoring_temperature(1.0), torch.no_grad():  # the reference is the base model, exactly
        reference_lp = learner.reference(batch.input_ids, batch.attention_mask, scored=batch.response_mask > 0)[0]
    torch.testing.assert_close(reference_lp, base_lp, rtol=0, atol=1e-5)

    # The merged state dict is a plain model's, and that plain model is the policy.
    merged = learner.full_state_dict()
    assert set(merged) == set(base.state_dict()) | {"lm_head.weight"}
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    plain.load_state_dict(merged, strict=False)
    learner.engine.eval()
    with torch.no_grad():
        policy_lp = learner.engine(batch.input_ids, batch.attention_mask, scored=batch.response_mask > 0)[0]
    torch.testing.assert_close(_logprobs(plain, batch), policy_lp, rtol=0, atol=1e-4)
    assert (policy_lp - base_lp).abs().max() > 1e-3

    # The saved folder: merged weights a plain load reads without missing keys, and PEFT's adapter folder.
    learner.save_weights(tmp_path / "model", tok, is_main=True)
    saved, info = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32,
                                                       output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    torch.testing.assert_close(_logprobs(saved, batch), policy_lp, rtol=0, atol=1e-4)
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                        tmp_path / "model" / "adapter")
    torch.testing.assert_close(_logprobs(adapted.merge_and_unload(), batch), policy_lp, rtol=0, atol=1e-4)


@pytest.mark.parametrize("targets, needle", [
    (["qkv_proj"], r"model\.lora\.target_modules=\['qkv_proj'\] matches no Linear.*'q_proj'"),
    (["embed_tokens"], r"model\.lora\.target_modules=\['embed_tokens'\] puts adapters on layers that are not hidden "
                       r"Linear layers \(\['model\.embed_tokens'\]\).*'q_proj'"),
])
def test_target_modules_that_cannot_work_name_the_key_and_the_layers(tiny_model_dir, targets, needle):
    init_distributed()
    bad = OmegaConf.merge(LORA, {"target_modules": targets})
    with pytest.raises(UserError, match=needle):
        Learner(str(tiny_model_dir), zero_stage=0, lr=1e-3, grad_clip=1.0, episodes_per_rank=4,
                micro_batch_size=4, lora=bad)


@pytest.mark.slow
def test_a_lora_run_trains_syncs_evaluates_and_resumes_exactly(tiny_model_dir, tmp_path):
    """Three steps with adapters (vLLM gets merged weights each step: mismatch <= 1e-3 while the policy moves
    off the base), a checkpoint per step, the merged folder evaluated by engine.evaluate; then the step-3
    checkpoint is removed and the same command resumes from step 2 and repeats step 3 exactly."""
    out = tmp_path / "run"
    command = [sys.executable, "engine/train.py", "configs/default.yaml", f"model.path={tiny_model_dir}",
               "model.lora.r=8", "model.lora.alpha=32", "train.lr=5e-3", "algo.stage1_steps=0", "eval.every=0",
               "eval.problems=8", "rollout.prompts_per_step=4", "train.steps=3", "train.save_every=1",
               f"train.output_dir={out}"]
    run_script(command, timeout=900)
    straight = json.loads((out / "summary.json").read_text())["train"]["history"]
    assert_weights_synced(straight)
    step3 = out / "checkpoints" / "step-000003"
    assert (step3 / "model" / "adapter" / "adapter_model.safetensors").is_file()
    metrics = tmp_path / "eval.json"
    run_script([sys.executable, "-m", "engine.evaluate", "configs/default.yaml", f"model.path={step3 / 'model'}",
                "eval.problems=8", "--json", str(metrics)], timeout=600)
    assert json.loads(metrics.read_text())["n"] == 8

    shutil.rmtree(step3)
    (out / "summary.json").unlink()
    resumed = run_script(command, timeout=900)
    assert "[resume] continuing from" in resumed.stdout and "step-000002" in resumed.stdout
    again = json.loads((out / "summary.json").read_text())["train"]["history"]
    assert len(again) == 3
    for key in ("loss", "reward_t1", "reward_t2", "kl_t1", "kl_t2", "grad_norm"):
        assert again[2][key] == pytest.approx(straight[2][key], rel=1e-6, abs=1e-9), key


def test_dedicated_workers_receive_the_merged_weights(tiny_model_dir):
    """The bucketed stream to rollout workers carries a LoRA policy as the plain model: the plain names,
    the merged values (what the colocated engine gets from full_state_dict)."""
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    from rollout.weight_sync import gathered_state_dict, receive_weights, send_weights, weight_spec

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    plain_names = set(lm.state_dict())
    get_peft_model(lm, PeftLora(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_()  # B = 0 at the start would make merged == base
    sent = []
    send_weights(lm, zero_stage=0, is_sender=True, broadcast=sent.append, bucket_bytes=100_000)
    pending = iter(sent)
    received = dict(receive_weights(weight_spec(lm), 100_000, lambda t: t.copy_(next(pending))))
    assert set(received) == plain_names | {"lm_head.weight"}
    merged = gathered_state_dict(lm, zero_stage=0)
    q = "model.layers.0.self_attn.q_proj"
    layer = lm.get_submodule(q)
    by_hand = layer.base_layer.weight + layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(received[f"{q}.weight"], by_hand.detach())
    assert not torch.equal(by_hand, layer.base_layer.weight)
    for name, value in merged.items():
        assert torch.equal(received[name], value), name


def test_a_checkpoint_resumes_only_with_the_adapters_it_was_trained_with(tmp_path):
    """Another rank or layer set would not fit the saved weights (DeepSpeed's load raised a raw traceback);
    another alpha would silently rescale every adapter: the trainer's resume check refuses each."""
    from engine.config.loading import load_config
    from engine.runtime.checkpoint import check_resume_config

    saved = OmegaConf.to_container(load_config(["model.lora.r=8"]), resolve=True)
    for override, change in [("model.lora.r=0", "model.lora.r: 8 -> 0"), ("model.lora.r=4", "model.lora.r: 8 -> 4"),
                             ("model.lora.alpha=4", "model.lora.alpha: 16.0 -> 4.0"),
                             ("model.lora.target_modules=[q_proj]", "model.lora.target_modules: ['all-linear'] -> "
                                                                    "['q_proj']")]:
        with pytest.raises(UserError, match="trained with other settings") as err:
            check_resume_config(load_config(["model.lora.r=8", override]), saved, tmp_path)
        assert change in str(err.value), str(err.value)
    full = OmegaConf.to_container(load_config([]), resolve=True)
    with pytest.raises(UserError, match=r"model\.lora\.r: 0 -> 8"):
        check_resume_config(load_config(["model.lora.r=8"]), full, tmp_path)


@pytest.mark.slow
def test_two_ranks_zero3_with_adapters(tiny_model_dir, tmp_path):
    """Adapters sharded over 2 learner ranks at ZeRO-3: the reference (adapters off) and the merged weights
    are gathered across ranks, vLLM on each rank follows the policy, and rank 0 saves both folders."""
    from engine.runtime.distributed import free_port

    out = tmp_path / "run"
    # threshold 0: the tiny model's matrices and the adapters are split too (at the default all stay whole)
    proc = run_script(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "engine/train.py",
                       "configs/default.yaml", f"model.path={tiny_model_dir}", "deepspeed.zero_stage=3",
                       "deepspeed.param_persistence_threshold=0", "model.lora.r=8", "model.lora.alpha=32",
                       "train.lr=5e-3", "algo.stage1_steps=0", "train.steps=3", "eval.every=0", "eval.problems=8",
                       "rollout.prompts_per_step=4", f"train.output_dir={out}"], timeout=900)
    counts = re.search(r"\[zero3\] policy: (\d+) of (\d+) parameters partitioned", proc.stdout)
    assert counts and counts[1] == counts[2], proc.stdout[-3000:]
    assert_weights_synced(json.loads((out / "summary.json").read_text())["train"]["history"])
    saved = out / "checkpoints" / "step-000003" / "model"
    merged = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                        saved / "adapter").merge_and_unload()
    for name, value in adapted.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[name], value, rtol=0, atol=1e-5, msg=name)
