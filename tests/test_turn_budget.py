"""Later turns of a chain get at most the room left in the engine's context (evaluation with more turns
than the model was trained with); a chain with no room left gets an empty, unfinished turn."""

from engine.builtin.tokenizer import build_char_tokenizer
from engine.tasks.data import Problem
from rollout.episodes import correction_request_ids, encode_prompt, sample_episodes
from rollout.vllm_engine import Completion

INSTR = "Fix it."


class BudgetEngine:
    """Answers every request with as many 'x' tokens as its budget allows, recording the budgets."""

    def __init__(self, tokenizer, max_model_len: int):
        self.max_model_len, self.calls = max_model_len, []
        self.x = tokenizer("x", add_special_tokens=False).input_ids[0]

    def generate(self, prompts, n, max_tokens, temperature, progress=False, min_tokens=0):
        budgets = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
        self.calls.append((max_tokens, [len(p) for p in prompts]))
        return [[Completion([self.x] * b, [0.0] * b, "x" * b, False) for _ in range(n)] for b in budgets]


def test_later_turns_get_the_room_that_is_left():
    tok = build_char_tokenizer()
    problems = [Problem("1+1=?", "2")]
    prompt = len(encode_prompt(tok, "1+1=?"))
    empty = Completion([], [], "", False)
    request = len(correction_request_ids(tok, "1+1=?", [empty], INSTR))
    # room for turn 1 (10 tokens) and part of turn 2, none for turn 3
    engine = BudgetEngine(tok, max_model_len=prompt + 10 + request + 4)
    (ep,) = sample_episodes(engine, tok, problems, n=1, max_tokens=10, temperature=1.0, instruction=INSTR, turns=3)
    assert engine.calls[0][0] == 10  # turn 1: the full budget, as one int (the training path)
    assert engine.calls[1][0] == [4]  # turn 2: the room left
    assert len(engine.calls) == 2  # turn 3: no request at all
    assert [len(t.token_ids) for t in ep.turns] == [10, 4, 0] and not ep.turns[2].finished
    assert len(ep.turn_prompt_ids) == 3


def test_a_chain_that_fits_passes_one_budget_for_all():
    tok = build_char_tokenizer()
    engine = BudgetEngine(tok, max_model_len=4096)
    sample_episodes(engine, tok, [Problem("1+1=?", "2")] * 2, n=2, max_tokens=5, temperature=1.0,
                    instruction=INSTR, turns=3)
    assert [c[0] for c in engine.calls] == [5, 5, 5]
