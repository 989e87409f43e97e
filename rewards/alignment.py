"""Edit-distance alignment of a sampled response with its rewrite, and the token rewards it gives
(the seq2seq reward model of arXiv 2409.00162): a response token the rewrite keeps is rewarded, one it
changes or deletes is penalised, and so is the token sampled where the rewrite inserts what was missing."""

from __future__ import annotations

from collections.abc import Sequence

KEEP, CHANGE = "keep", "change"


def edit_operations(response: Sequence[int], rewrite: Sequence[int]) -> list[tuple[str, int | None, int | None]]:
    """A minimal (Levenshtein, unit costs) edit script turning `response` into `rewrite`, in order:
    ("match", i, j), ("substitute", i, j), ("delete", i, None), ("insert", None, j). Ties prefer a match,
    then a substitution, then a deletion, so the script is deterministic."""
    n, m = len(response), len(rewrite)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        cost[i][0] = i
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diagonal = cost[i - 1][j - 1] + (response[i - 1] != rewrite[j - 1])
            cost[i][j] = min(diagonal, cost[i - 1][j] + 1, cost[i][j - 1] + 1)
    ops, i, j = [], n, m
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (response[i - 1] != rewrite[j - 1]):
            ops.append(("match" if response[i - 1] == rewrite[j - 1] else "substitute", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            ops.append(("delete", i - 1, None))
            i -= 1
        else:
            ops.append(("insert", None, j - 1))
            j -= 1
    return ops[::-1]


def token_labels(response: Sequence[int], rewrite: Sequence[int]) -> list[str]:
    """Per response token, KEEP or CHANGE. Substituted and deleted tokens are changed; an insertion changes
    the response token sampled at the gap (the next one; at the very end, the last one)."""
    labels = [KEEP] * len(response)
    pending_insert = False
    for op, i, _ in edit_operations(response, rewrite):
        if op == "insert":
            pending_insert = True
            continue
        if op != "match" or pending_insert:
            labels[i] = CHANGE
        pending_insert = False
    if pending_insert and labels:
        labels[-1] = CHANGE
    return labels


def token_rewards(response: Sequence[int], rewrite: Sequence[int], keep: float, change: float,
                  identical: float) -> list[float]:
    """The response's token rewards: `identical` on every token when the rewrite is the response itself
    (a sequence-level verdict), else `keep` / `change` by token_labels."""
    if list(response) == list(rewrite):
        return [identical] * len(response)
    return [keep if label == KEEP else change for label in token_labels(response, rewrite)]
