"""Collapse watch for self-rewards: entropy falling through a floor, or the self-reward rising while
held-out gold accuracy falls over K consecutive evaluations (both are published failure modes of
entropy-type and self-consistency rewards)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CollapseGuard:
    min_entropy: float  # 0 disables the entropy floor
    patience: int  # K consecutive evals of reward up / accuracy down; 0 disables
    history: list[tuple[float, float]] = field(default_factory=list)  # (mean train reward, eval accuracy)

    def check_entropy(self, entropy: float) -> str | None:
        if self.min_entropy > 0 and entropy < self.min_entropy:
            return f"train/entropy {entropy:.4f} fell below guard.min_entropy={self.min_entropy}"
        return None

    def check_eval(self, train_reward: float, eval_accuracy: float) -> str | None:
        """Call at each evaluation with the mean training reward since the previous one."""
        self.history.append((train_reward, eval_accuracy))
        if self.patience <= 0 or len(self.history) <= self.patience:
            return None
        recent = self.history[-self.patience - 1:]
        pairs = list(zip(recent, recent[1:]))
        if all(b[0] > a[0] and b[1] < a[1] for a, b in pairs):
            return (f"the training reward rose and eval accuracy fell over {self.patience} consecutive evals "
                    f"(reward {recent[0][0]:.3f} -> {recent[-1][0]:.3f}, accuracy {recent[0][1]:.3f} -> "
                    f"{recent[-1][1]:.3f})")
        return None
