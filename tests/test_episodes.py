import torch

from engine.builtin.tokenizer import build_char_tokenizer
from engine.tasks.data import Problem
from engine.update.batch import collate
from rollout.episodes import Episode, correction_request_ids, encode_prompt
from rollout.vllm_engine import Completion

INSTR = "Check your answer and fix any mistake."


def _completion(tok, text, finished=True):
    ids = tok(text, add_special_tokens=False).input_ids + ([tok.eos_token_id] if finished else [])
    return Completion(token_ids=ids, logprobs=[-0.1 * (i + 1) for i in range(len(ids))], text=text, finished=finished)


def _episode(tok, prompt, y1, y2, finished1=True):
    c1 = _completion(tok, y1, finished1)
    p_ids = encode_prompt(tok, prompt)
    t2p = p_ids + c1.token_ids + correction_request_ids(tok, prompt, [c1], INSTR)
    return Episode(Problem(prompt, "5"), 0, [p_ids, t2p], [c1, _completion(tok, y2)])


def test_turn2_prompt_equals_the_chat_template_rendering():
    tok = build_char_tokenizer()
    ep = _episode(tok, "2+3=?", "Final Answer: 6", "Final Answer: 5")
    conversation = [{"role": "user", "content": "2+3=?"}, {"role": "assistant", "content": "Final Answer: 6"},
                    {"role": "user", "content": INSTR}]
    rendered = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ep.turn_prompt_ids[1]) == rendered
    # the sampled turn-1 tokens (with their end-of-turn token) sit unchanged inside the turn-2 prompt
    s, e = ep.span(0)
    assert ep.input_ids[s:e] == ep.turns[0].token_ids and ep.input_ids[e - 1] == tok.eos_token_id


def test_truncated_first_answer_is_closed_by_the_template():
    tok = build_char_tokenizer()
    ep = _episode(tok, "2+3=?", "Final Ans", "Final Answer: 5", finished1=False)
    s, e = ep.span(0)
    assert ep.input_ids[e] == tok.eos_token_id  # the template's end-of-turn, not a sampled token
    assert "Final Ans<|im_end|>\n<|im_start|>user\n" in tok.decode(ep.turn_prompt_ids[1])


def test_collate_masks_cover_exactly_the_sampled_tokens():
    tok = build_char_tokenizer()
    eps = [_episode(tok, "2+3=?", "Final Answer: 5", "Final Answer: 5"),
           _episode(tok, "12+30=?", "Final Answer: 41", "Final Answer: 42")]
    batch = collate(eps, tok.pad_token_id)
    for row, ep in enumerate(eps):
        s1, e1 = ep.span(0)
        s2, e2 = ep.span(1)
        assert batch.turn_mask(0)[row].nonzero().flatten().tolist() == list(range(s1, e1))
        assert batch.turn_mask(1)[row].nonzero().flatten().tolist() == list(range(s2, e2))
        assert torch.allclose(batch.rollout_logprobs[row, s2:e2], torch.tensor(ep.turns[1].logprobs))
        assert batch.attention_mask[row].sum().item() == len(ep.input_ids)
    assert batch.input_ids[0, len(eps[0].input_ids):].eq(tok.pad_token_id).all()
    assert len(batch.slice(1, 2)) == 1


def _chain(tok, prompt, answers, finished=None):
    """An episode of len(answers) turns, each later turn's context built as sample_episodes builds it."""
    finished = finished or [True] * len(answers)
    contexts, turns = [encode_prompt(tok, prompt)], []
    for k, (text, done) in enumerate(zip(answers, finished)):
        if k:
            contexts.append(contexts[-1] + turns[-1].token_ids + correction_request_ids(tok, prompt, turns, INSTR))
        turns.append(_completion(tok, text, done))
    return Episode(Problem(prompt, "5"), 0, contexts, turns)


def test_two_turn_episode_fields():
    tok = build_char_tokenizer()
    ep = _episode(tok, "2+3=?", "Final Answer: 6", "Final Answer: 5")
    assert ep.prompt_ids == ep.turn_prompt_ids[0] == encode_prompt(tok, "2+3=?")
    assert ep.input_ids == ep.turn_prompt_ids[1] + ep.turns[1].token_ids
    assert ep.span(1) == (len(ep.turn_prompt_ids[1]), len(ep.input_ids))
    assert _chain(tok, "2+3=?", ["Final Answer: 6", "Final Answer: 5"]) == ep  # the helpers agree


def test_third_turn_context_equals_the_chat_template_rendering():
    tok = build_char_tokenizer()
    y1, y2, y3 = "Final Answer: 6", "Final Answer: 4", "Final Answer: 5"
    ep = _chain(tok, "2+3=?", [y1, y2, y3])
    conversation = [{"role": "user", "content": "2+3=?"}, {"role": "assistant", "content": y1},
                    {"role": "user", "content": INSTR}, {"role": "assistant", "content": y2},
                    {"role": "user", "content": INSTR}]
    assert tok.decode(ep.turn_prompt_ids[2]) == tok.apply_chat_template(conversation, tokenize=False,
                                                                        add_generation_prompt=True)
    assert tok.decode(ep.turn_prompt_ids[1]) == tok.apply_chat_template(conversation[:3], tokenize=False,
                                                                        add_generation_prompt=True)
    # each context extends the one before; every turn's sampled tokens sit unchanged in input_ids
    assert ep.turn_prompt_ids[2][:len(ep.turn_prompt_ids[1])] == ep.turn_prompt_ids[1]
    assert ep.input_ids == ep.turn_prompt_ids[2] + ep.turns[2].token_ids
    for k in range(3):
        s, e = ep.span(k)
        assert ep.input_ids[s:e] == ep.turns[k].token_ids and ep.input_ids[e - 1] == tok.eos_token_id, k
    assert ep.span(0)[1] <= ep.span(1)[0] and ep.span(1)[1] <= ep.span(2)[0]
    # the request after turn 2 is the same tokens as after turn 1: end of turn, instruction, header
    request1 = correction_request_ids(tok, "2+3=?", ep.turns[:1], INSTR)
    request2 = correction_request_ids(tok, "2+3=?", ep.turns[:2], INSTR)
    assert request1 == request2 and ep.turn_prompt_ids[2][ep.span(1)[1]:] == request2


def test_truncated_second_answer_is_closed_by_the_template():
    tok = build_char_tokenizer()
    ep = _chain(tok, "2+3=?", ["Final Answer: 6", "Final Ans", "Final Answer: 5"], finished=[True, False, True])
    s, e = ep.span(1)
    assert ep.input_ids[s:e] == ep.turns[1].token_ids and ep.input_ids[e] == tok.eos_token_id  # the template's
    assert "Final Ans<|im_end|>\n<|im_start|>user\n" in tok.decode(ep.turn_prompt_ids[2])


def test_collate_three_turns_masks_each_turn():
    tok = build_char_tokenizer()
    eps = [_chain(tok, "2+3=?", ["Final Answer: 5", "Final Answer: 6", "Final Answer: 5"]),
           _chain(tok, "12+30=?", ["Final Answer: 41", "Final Answer: 42", "x"])]
    batch = collate(eps, tok.pad_token_id)
    assert batch.turns == 3 and batch.turn_masks.shape == (2, 3, batch.input_ids.shape[1])
    for row, ep in enumerate(eps):
        for k in range(3):
            s, e = ep.span(k)
            assert batch.turn_mask(k)[row].nonzero().flatten().tolist() == list(range(s, e)), (row, k)
            assert torch.allclose(batch.rollout_logprobs[row, s:e], torch.tensor(ep.turns[k].logprobs))
        assert batch.attention_mask[row].sum().item() == len(ep.input_ids)
    assert torch.equal(batch.response_mask, batch.turn_masks.sum(dim=1)) and batch.response_mask.max() == 1
    assert batch.slice(1, 2).turn_masks.shape[:2] == (1, 3)


class _Scripted:
    """A stand-in rollout engine: answers turn k of every chain with the text `answers[k]`."""

    max_model_len = 10_000  # room for every turn: each gets max_tokens

    def __init__(self, tok, answers):
        self.tok, self.answers, self.calls = tok, answers, []

    def generate(self, prompts, n, max_tokens, temperature, progress=False, min_tokens=0):
        text = self.answers[len(self.calls)]
        self.calls.append((prompts, n))
        return [[_completion(self.tok, text) for _ in range(n)] for _ in prompts]


def test_sample_episodes_chains_k_turns():
    from rollout.episodes import sample_episodes

    tok = build_char_tokenizer()
    problems = [Problem("2+3=?", "5"), Problem("1+1=?", "2")]
    answers = ["Final Answer: 6", "Final Answer: 4", "Final Answer: 5"]
    engine = _Scripted(tok, answers)
    episodes = sample_episodes(engine, tok, problems, n=2, max_tokens=16, temperature=1.0, instruction=INSTR,
                               turns=3)
    assert [n for _, n in engine.calls] == [2, 1, 1] and [len(p) for p, _ in engine.calls] == [2, 4, 4]
    assert [ep.group for ep in episodes] == [0, 0, 1, 1]
    assert engine.calls[2][0] == [ep.turn_prompt_ids[2] for ep in episodes]  # turn 3 sampled from those contexts
    for ep in episodes:
        assert [t.text for t in ep.turns] == answers and len(ep.turn_prompt_ids) == 3
        chain = _chain(tok, ep.problem.prompt, answers)  # the contexts the chat template gives
        assert ep.turn_prompt_ids == chain.turn_prompt_ids and ep.turns == chain.turns
    single = sample_episodes(_Scripted(tok, answers), tok, problems, n=2, max_tokens=16, temperature=1.0,
                             instruction=INSTR, turns=1)
    assert [len(ep.turns) for ep in single] == [1] * 4 and single[0].input_ids == single[0].prompt_ids + \
        single[0].turns[0].token_ids


def test_turn_overhead_counts_every_turn_and_request():
    from rollout.episodes import turn_overhead

    tok = build_char_tokenizer()
    truncated = Completion(token_ids=[], logprobs=[], text="", finished=False)
    request = len(correction_request_ids(tok, "2+3=?", [truncated], INSTR))
    assert request > len(INSTR)
    assert turn_overhead(tok, "2+3=?", 48, INSTR) == 2 * 48 + request  # the default: two turns
    assert turn_overhead(tok, "2+3=?", 48, INSTR, turns=3) == 3 * 48 + 2 * request
    assert turn_overhead(tok, "2+3=?", 48, INSTR, turns=1) == 48
