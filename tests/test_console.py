"""Quiet, honest output: known-benign library lines stay off the terminal but land in train.log."""

import subprocess
import sys
import textwrap

import pytest

from engine.console import benign
from tests.conftest import ROOT

BENIGN_LINES = [
    "WARNING 12-04 20:40:01 [layerwise.py:266] RotaryEmbedding: Failed to load weights",
    "[2026-12-04 20:33:29,672] [WARNING] [real_accelerator.py:213:get_accelerator] Setting accelerator to CPU. "
    "If you have GPU or other accelerator, we were unable to detect it.",
    "INFO 12-04 20:40:01 [core.py:101] Initializing a V1 LLM engine (v0.32.0) with config: ...",
    "\x1b[1;36m(EngineCore pid=123) \x1b[0;0mINFO 12-04 20:40:01 [core.py:101] started",
    "[2026-12-04 20:33:30,001] [INFO] [config.py:1000:print] DeepSpeedEngine configuration:",
]
REAL_LINES = [
    "[step 2/2] stage 2 | reward 0.5/0.6 | acc 0.5/0.6 | kl 0.01/0.02 | 1.0s | eta 0m00s",
    "ERROR 12-04 20:40:01 [core.py:9] EngineCore failed to start.",
    "WARNING 12-04 20:40:01 [layerwise.py:266] Qwen2MLP: Failed to load weights",  # a real weight: shown
    "[warn] rollout.min_tokens=128: ...",
    "Traceback (most recent call last):",
]


@pytest.mark.parametrize("line", BENIGN_LINES)
def test_known_benign_lines_are_recognised(line):
    assert benign(line)


@pytest.mark.parametrize("line", REAL_LINES)
def test_progress_and_real_problems_are_not(line):
    assert not benign(line)


@pytest.mark.parametrize("level", ["info", "debug"])
def test_the_console_filters_the_terminal_and_keeps_everything_in_the_log(tmp_path, level):
    """Python prints, raw writes to fd 2 (as C++ code does) and a child process all pass through."""
    script = textwrap.dedent(f"""
        import os, subprocess, sys
        sys.path.insert(0, {str(ROOT)!r})
        from engine.console import to_console
        to_console(__import__("pathlib").Path({str(tmp_path)!r}), 0, {level!r})
        print("[step 1/2] progress")
        print({BENIGN_LINES[0]!r})
        os.write(2, b"ERROR from C++\\n" + {BENIGN_LINES[2]!r}.encode() + b"\\n")
        subprocess.run([sys.executable, "-c", "print('child says hi')"])
        print("no newline at the end", end="")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    terminal = proc.stdout + proc.stderr
    assert "ERROR from C++" in proc.stderr and "[step 1/2] progress" in proc.stdout  # each to its own stream
    log = (tmp_path / "train.log").read_text()
    for line in ("[step 1/2] progress", "ERROR from C++", "child says hi", "no newline at the end"):
        assert line in terminal and line in log
    for line in (BENIGN_LINES[0], BENIGN_LINES[2]):
        assert line in log
        assert (line in terminal) is (level == "debug")
