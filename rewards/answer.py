"""The answer helpers a reward needs, where reward plugins import them from: extraction ("Final Answer:",
\\boxed{}, ####) and matching. They live with the task's text in engine/tasks/answer.py."""

from engine.tasks.answer import answers_match, extract_answer  # noqa: F401

__all__ = ["answers_match", "extract_answer"]
