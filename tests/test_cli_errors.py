"""Bad input stops `engine/train.py` with one clear line on stderr and exit code 2, before any set-up."""

import subprocess
import sys

import pytest

from engine.config import load_config
from engine.errors import UserError
from engine.train import check_context
from tests.conftest import ROOT


@pytest.mark.parametrize("args, needle", [
    (["train.stepz=3"], "unknown config key 'train.stepz' (override 'train.stepz'). Did you mean 'train.steps'?"),
    (["data.train=missing.jsonl"], "data file 'missing.jsonl' not found"),
    (["model.path=/nonexistent/model"], "model.path='/nonexistent/model' is not a folder with a config.json"),
    (["reward.kind=judge"], "reward.kind='judge' is not registered"),
    (["data.train=tests/data/prompts_only.jsonl", "reward.kind=gold"],
     "tests/data/prompts_only.jsonl:1: problem has no 'answer', but reward.kind=gold needs gold answers"),
    (["reward.kind=mix"], "reward.kind=mix needs reward.weights"),
    (["reward.metric=entropy"], "reward.metric='entropy' is not one of"),
    (["learner.logprob_impl=fused"], "learner.logprob_impl='fused' is not one of"),
    (["learner.logprob_impl=triton"], "learner.logprob_impl=triton: logprob impl 'triton' needs a CUDA device"),
])
def test_train_cli_reports_user_errors_without_traceback(args, needle, tmp_path):
    proc = subprocess.run([sys.executable, "engine/train.py", *args, f"train.output_dir={tmp_path}/run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {needle}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing was set up


def test_context_checks_name_the_keys(tiny_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    from rollout.data import load_problems

    tok, model_config = AutoTokenizer.from_pretrained(tiny_model_dir), AutoConfig.from_pretrained(tiny_model_dir)
    problems = load_problems("builtin:arith-eval")
    check_context(load_config([]), model_config, tok, problems)  # the defaults fit
    with pytest.raises(UserError, match="rollout.max_model_len=512 exceeds the model's max_position_embeddings=256"):
        check_context(load_config(["rollout.max_model_len=512"]), model_config, tok, problems)
    with pytest.raises(UserError, match=r"rollout.max_tokens=100.*rollout.max_model_len=256"):
        check_context(load_config(["rollout.max_tokens=100"]), model_config, tok, problems)
