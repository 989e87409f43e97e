"""The terminal shows our progress lines and real problems; the run directory's train.log keeps everything.

At `log.level=info` (the default) the process's stdout and stderr (file descriptors 1 and 2, so C++ and
library output too) go through pipes: every line is appended to the log file, and a line reaches the
terminal (stdout or stderr, as written) unless it is one of the known-benign messages below. `log.level=debug` shows every line.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
from pathlib import Path

# Each pattern: a message that is expected and harmless, and why.
BENIGN = [
    # vLLM reloads weights layer by layer after every sync; a rotary embedding's cos/sin cache is computed
    # from the config, not a weight in the state dict, so vLLM keeps its own tensor and says "failed".
    re.compile(r"RotaryEmbedding: Failed to load weights"),
    # DeepSpeed finds no GPU and uses its CPU accelerator: on a CPU machine that is the intended set-up.
    re.compile(r"Setting accelerator to CPU\. If you have GPU or other accelerator"),
    # vLLM's and DeepSpeed's INFO lines (start-up, configuration, timing): informational, not problems.
    re.compile(r"^(?:\x1b\[[0-9;]*m|\(\w+ pid=\d+\) )*INFO \d\d-\d\d \d\d:\d\d:\d\d"),
    re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\] \[INFO\]"),
]


def benign(line: str) -> bool:
    return any(p.search(line) for p in BENIGN)


class Console:
    """Replaces fds 1 and 2 with pipes, each read by a thread that writes every line to `log_path` and the
    non-benign ones (all of them with show_all) to the original stdout or stderr."""

    def __init__(self, log_path: Path, show_all: bool):
        self.show_all = show_all
        self.log_path = log_path
        self.log = None  # opened once the run directory exists: a start-up error leaves no folder behind
        self.held: list[bytes] = []  # the lines written before that
        self.lock = threading.Lock()  # one line at a time into the log from both readers
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = {fd: os.dup(fd) for fd in (1, 2)}
        self.readers = []
        for fd in (1, 2):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            reader = threading.Thread(target=self._pump, args=(read_end, self.saved[fd]), daemon=True,
                                      name=f"console-{fd}")
            reader.start()
            self.readers.append(reader)
        atexit.register(self.close)

    def _pump(self, read_end: int, terminal: int) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._emit(line + b"\n", terminal)
            if pending:
                self._emit(pending, terminal)

    def _emit(self, raw: bytes, terminal: int) -> None:
        with self.lock:
            self.held.append(raw)
            self._write_held()
        if self.show_all or not benign(raw.decode("utf-8", "replace")):
            os.write(terminal, raw)

    def _write_held(self) -> None:
        if self.log is None and self.log_path.parent.is_dir():
            self.log = open(self.log_path, "ab", buffering=0)
        if self.log is not None:
            self.log.write(b"".join(self.held))
            self.held = []

    def close(self) -> None:
        """Flushes, puts the terminal back on fds 1 and 2 and waits for the readers to drain the pipes
        (a child process still holding a pipe keeps its reader open: the wait is bounded)."""
        if not self.readers:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)  # the pipe's last writer closes: its reader sees the end
        for reader in self.readers:
            reader.join(timeout=10)
        self.readers = []
        with self.lock:
            self._write_held()
            if self.log is not None:
                self.log.close()


def to_console(run_dir: Path, rank: int, level: str) -> Console:
    """train.log for rank 0 (train.rank<r>.log for the others), appended across resumes."""
    name = "train.log" if rank == 0 else f"train.rank{rank}.log"
    return Console(run_dir / name, show_all=level == "debug")
