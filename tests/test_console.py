"""Quiet, honest output: known-benign library lines stay off the terminal but land in train.log."""

import subprocess
import sys
import textwrap

import pytest

from engine.runtime.console import SEGMENT_LIMIT, LineFilter, benign, segments
from tests.conftest import ROOT

BENIGN_LINES = [
    "WARNING 12-04 20:40:01 [layerwise.py:266] RotaryEmbedding: Failed to load weights",
    "[2026-12-04 20:33:29,672] [WARNING] [real_accelerator.py:213:get_accelerator] Setting accelerator to CPU. "
    "If you have GPU or other accelerator, we were unable to detect it.",
    "INFO 12-04 20:40:01 [core.py:101] Initializing a V1 LLM engine (v0.32.0) with config: ...",
    "\x1b[1;36m(EngineCore pid=123) \x1b[0;0mINFO 12-04 20:40:01 [core.py:101] started",
    "[2026-12-04 20:33:30,001] [INFO] [config.py:1000:print] DeepSpeedEngine configuration:",
    "(MainProcess pid=5) WARNING 12-05 07:56:01 [cpu_worker.py:95] libtcmalloc is not found in LD_PRELOAD. ...",
    "(MainProcess pid=5) WARNING 12-05 07:56:01 [vllm.py:700] Enforce eager set, disabling torch.compile, ...",
    "(MainProcess pid=5) WARNING 12-05 07:56:01 [cpu_worker.py:120] CPU backend doesn't allow to use "
    "`torch.set_num_threads` after the thread binding, skip it.",
    "/x/site-packages/vllm/triton_utils/dispatcher.py:42: FutureWarning: `torch.distributed.reduce_op` is deprecated",
    "  wrapper = lookup(vars(value).get(\"kernel\"))",
    "Loading weights: 100%|██████████| 26/26 [00:00<00:00, 24566.77it/s]",
    "Writing model shards:   0%|          | 0/1 [00:00<?, ?it/s]",
    "(MainProcess pid=5) WARNING 12-05 07:56:01 [arg_utils.py:1] The global random seed is set to 0. Since ...",
    "Triton is installed, but doesn't include CPU backend. Disabling Triton.",
    "[rank0]:[W1205 07:56:01.1 utils.cpp:1] Warning: NUMA binding: Using MEMBIND policy for memory allocation",
    "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",
    "(MainProcess pid=2375) WARNING 12-05 08:36:52 [interface.py:1457] Unknown vLLM environment variable detected: "
    "VLLM_DIST_IDENT",
]
REAL_LINES = [
    "[step 2/2] stage 2 | reward 0.5/0.6 | acc 0.5/0.6 | kl 0.01/0.02 | 1.0s | eta 0m00s",
    "ERROR 12-04 20:40:01 [core.py:9] EngineCore failed to start.",
    "WARNING 12-04 20:40:01 [layerwise.py:266] Qwen2MLP: Failed to load weights",  # a real weight: shown
    "[warn] rollout.min_tokens=128: ...",
    "Traceback (most recent call last):",
    "(MainProcess pid=5) WARNING 12-05 07:56:01 [scheduler.py:10] KV cache is full: preempting requests",
    "/x/site-packages/torch/nn/modules/module.py:9: FutureWarning: something else is deprecated",
    "Processed prompts:  12%|█▎        | 1/8 [00:02<00:15,  2.20s/it]",  # the evaluation's progress
    "(MainProcess pid=5) WARNING 12-05 08:36:52 [interface.py:1457] Unknown vLLM environment variable detected: "
    "VLLM_ATTENTION_BACKNED",  # a user's misspelt variable: shown
    # a crash message written after a bar's last "\r" joins the bar's segment: shown
    "Loading safetensors checkpoint shards:   0% Completed | 0/1 [00:00<?, ?it/s]terminate called after throwing "
    "an instance of 'c10::Error'",
]


def trainer_script(body: str) -> str:
    """A Python program that imports this repository's to_console, then runs body."""
    return f"import os, subprocess, sys, time\nsys.path.insert(0, {str(ROOT)!r})\n" \
           f"from engine.runtime.console import to_console\n{textwrap.dedent(body)}"


@pytest.mark.parametrize("line", BENIGN_LINES)
def test_known_benign_lines_are_recognised(line):
    assert benign(line)


@pytest.mark.parametrize("line", REAL_LINES)
def test_progress_and_real_problems_are_not(line):
    assert not benign(line)


@pytest.mark.parametrize("level", ["info", "debug"])
def test_the_console_filters_the_terminal_and_keeps_everything_in_the_log(tmp_path, level):
    """Python prints, raw writes to fd 2 (as C++ code does) and a child process all pass through."""
    script = trainer_script(f"""
        to_console(__import__("pathlib").Path({str(tmp_path)!r}), 0, {level!r})
        print("[step 1/2] progress")
        print({BENIGN_LINES[0]!r})
        os.write(2, b"ERROR from C++\\n" + {BENIGN_LINES[2]!r}.encode() + b"\\n")
        subprocess.run([sys.executable, "-c", "print('child says hi')"])
        # a tqdm bar as written: "\\r" + its text at each redraw, "\\n" when it closes, then a blank line
        sys.stderr.write("\\rLoading weights:   0%|   | 0/26 [00:00<?, ?it/s]"
                         "\\rLoading weights: 100%|###| 26/26 [00:00<00:00, 9.9it/s]\\n\\n")
        sys.stderr.write("\\rProcessed prompts:  50%|#  | 4/8\\rProcessed prompts: 100%|##| 8/8\\n")
        sys.stderr.flush()
        print("no newline at the end", end="")
        sys.stdout.flush()
        os.abort()  # a crash: what was written before it still reaches the terminal and the log
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()  # bytes: "\r" kept as written
    assert proc.returncode == -6, stderr  # SIGABRT
    terminal = stdout + stderr
    assert "ERROR from C++" in stderr and "[step 1/2] progress" in stdout  # each to its own stream
    log = (tmp_path / "train.log").read_text()
    for line in ("[step 1/2] progress", "ERROR from C++", "child says hi", "no newline at the end"):
        assert line in terminal and line in log
    for line in (BENIGN_LINES[0], BENIGN_LINES[2], "Loading weights: 100%"):
        assert line in log
        assert (line in terminal) is (level == "debug")
    assert "Processed prompts: 100%|##| 8/8\n" in stderr  # the evaluation's bar is shown
    assert ("\n\n" in stderr) is (level == "debug")  # the blank line after a hidden bar


def test_segments_split_at_line_ends_and_bound_an_endless_line():
    assert segments(b"a\rb\nc") == ([b"a\r", b"b\n"], b"c")
    done, rest = segments(b"x" * (2 * SEGMENT_LIMIT + 5))
    assert [len(d) for d in done] == [SEGMENT_LIMIT, SEGMENT_LIMIT] and rest == b"x" * 5


def test_only_one_blank_line_after_a_hidden_one_is_hidden():
    line_filter = LineFilter(show_all=False)
    shown = [line_filter.shown(s) for s in (b"Loading weights: 100%|#| 1/1 [00:00<00:00, 9.9it/s]\n", b"\n",
                                            b"\n", b"real\n", b"\n")]
    assert shown == [False, False, True, True, True]


def test_normal_exit_before_the_run_directory_exists_and_undecodable_bytes(tmp_path):
    """Output from before the run directory exists is held and logged once it does; the filter drains and
    exits when the trainer closes, even with a library's copy of fd 2 still open (close() does not wait out
    its timeout); each stream's unfinished line is logged whole, never split by the other stream's lines;
    bytes that are not UTF-8 pass through as written."""
    run_dir = tmp_path / "run"
    script = trainer_script(f"""
        console = to_console(__import__("pathlib").Path({str(run_dir)!r}), 0, "info")
        leaked = os.dup(2)  # as DeepSpeed's compiler probe leaves one: it must not keep the filter waiting
        print("before the folder", flush=True)
        time.sleep(0.3)
        os.mkdir({str(run_dir)!r})
        os.write(1, b"partial ")
        time.sleep(0.3)
        os.write(2, b"other stream\\n\\xff\\xfe not utf-8\\n")
        time.sleep(0.3)
        os.write(1, b"line\\n")
        process = console.process
        console.close()
        print("filter exited:", process.poll())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"filter exited: 0" in proc.stdout  # it saw the end and finished, not the 10 s timeout
    log = (run_dir / "train.log").read_bytes()
    assert b"before the folder\n" in log and b"partial line\n" in log
    assert b"\xff\xfe not utf-8\n" in log and b"\xff\xfe not utf-8\n" in proc.stderr


def test_output_already_sent_to_train_log_is_not_filtered_twice(tmp_path):
    """`train.py ... >> run/train.log 2>&1` (engine.sweep's capture): no filter starts, so the file gets every
    line once, in order, instead of two writers overwriting each other."""
    script = trainer_script(f"""
        print("console:", to_console(__import__("pathlib").Path({str(tmp_path)!r}), 0, "info"), flush=True)
        print({BENIGN_LINES[2]!r})
        print("[step 1/1] done")
    """)
    log = tmp_path / "train.log"
    log.write_text("earlier run\n")
    with log.open("a") as out:
        proc = subprocess.run([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT, timeout=60)
    assert proc.returncode == 0
    assert log.read_text() == f"earlier run\nconsole: None\n{BENIGN_LINES[2]}\n[step 1/1] done\n"
