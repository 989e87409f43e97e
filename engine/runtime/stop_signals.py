"""SIGINT/SIGTERM handling for the training loop: stop between steps, never half-way through one."""

from __future__ import annotations

import signal

from engine.runtime.distributed import reduce_max


class StopSignals:
    """SIGINT/SIGTERM do not kill a step half-way: the loop finishes the step, writes a checkpoint and
    exits with 128 + the signal number."""

    def __init__(self):
        self.received = 0
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._note)

    def _note(self, signum, _frame) -> None:
        if self.received:  # a second signal: stop now, the way the signal normally does
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.received = signum
        print(f"[signal] {signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
              f"(send it again to stop at once)", flush=True)

    def requested(self) -> int:
        """The signal any rank received (0: none); every rank agrees, so all of them stop together."""
        return int(reduce_max(float(self.received)))
