"""A model folder unlike the built-in one: Llama architecture, untied output head, its own tokenizer with
Llama-3-style special tokens (a BOS the tokenizer adds itself, <|eot_id|> as the end of turn) and chat
template. It must train (weights synced to vLLM each step), evaluate and save like builtin:tiny-arith."""

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_weights_synced, run_script

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|finetune_right_pad_id|>"]
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Reward plugin for a random model: a varied, label-free score, so the update has a gradient.
REWARD_PLUGIN = '''
import torch
from rewards import RewardInputs, register

@register("length_mod_3", needs_answer=False)
def length_mod_3(inputs: RewardInputs):
    turns = len(inputs.episodes[0].turns)
    return [torch.tensor([float(len(e.turns[k].text) % 3 == 0) for e in inputs.episodes]) for k in range(turns)]
'''


def build_llama_folder(folder: Path) -> Path:
    """A random 2-layer Llama (head_dim 64, vLLM's CPU attention needs >= 64) with a byte-level tokenizer whose
    special tokens come first (ids 0-5) and whose post-processor adds <|begin_of_text|>, as Llama 3's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from engine.builtin.tokenizer import _bytes_to_unicode

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for char in _bytes_to_unicode().values():
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                        pad_token="<|finetune_right_pad_id|>",
                                        additional_special_tokens=SPECIALS[1:4])
    tokenizer.chat_template = LLAMA3_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=ids["<|begin_of_text|>"],
                         eos_token_id=ids["<|eot_id|>"], pad_token_id=ids["<|finetune_right_pad_id|>"],
                         initializer_range=0.05)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id,
                                               eos_token_id=[ids["<|eot_id|>"], ids["<|end_of_text|>"]],
                                               pad_token_id=config.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_llama_folder_is_what_it_claims(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_llama_folder(tmp_path / "llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()  # untied
    assert tokenizer("ab").input_ids[0] == tokenizer.bos_token_id == 0  # the tokenizer adds its BOS
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "2+2=?"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.pad_token_id == 5
    from rollout.episodes import encode_prompt

    ids = encode_prompt(tokenizer, "2+2=?")  # the template's BOS only: the tokenizer's own is not added again
    assert ids[0] == 0 and 0 not in ids[1:]


@pytest.mark.slow
def test_a_llama_folder_trains_syncs_and_evaluates(tmp_path):
    folder = build_llama_folder(tmp_path / "llama")
    plugin = tmp_path / "length_reward.py"
    plugin.write_text(REWARD_PLUGIN)
    out = tmp_path / "run"
    run_script([sys.executable, "engine/train.py", "configs/default.yaml", f"model.path={folder}",
                f"reward.plugins=[{plugin}]", "reward.kind=length_mod_3", "train.lr=1e-2", "algo.stage1_steps=0",
                "train.steps=2", "eval.every=0", "eval.problems=8", "rollout.prompts_per_step=4",
                "train.save_every=2", f"train.output_dir={out}"], timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    assert_weights_synced(summary["train"]["history"])
    # evaluated before and after training with the folder's template (engine.evaluate runs the same code on a
    # saved folder: tests/test_lora.py runs it)
    assert summary["eval"]["before"]["n"] == summary["eval"]["after"]["n"] == 8

    saved = out / "checkpoints" / "step-000002" / "model"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoTokenizer.from_pretrained(saved).chat_template == LLAMA3_TEMPLATE
    model, info = AutoModelForCausalLM.from_pretrained(saved, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info  # lm_head saved, not re-initialised
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    base = AutoModelForCausalLM.from_pretrained(folder)
    assert not torch.equal(model.lm_head.weight, base.lm_head.weight)  # the head trained (untied, on its own)
