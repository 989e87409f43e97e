import torch

from engine.batch import collate
from engine.tokenizer import build_char_tokenizer
from rollout.data import Problem
from rollout.episodes import Episode, correction_request_ids, encode_prompt
from rollout.vllm_engine import Completion

INSTR = "Check your answer and fix any mistake."


def _completion(tok, text, finished=True):
    ids = tok(text, add_special_tokens=False).input_ids + ([tok.eos_token_id] if finished else [])
    return Completion(token_ids=ids, logprobs=[-0.1 * (i + 1) for i in range(len(ids))], text=text, finished=finished)


def _episode(tok, prompt, y1, y2, finished1=True):
    c1 = _completion(tok, y1, finished1)
    p_ids = encode_prompt(tok, prompt)
    t2p = p_ids + c1.token_ids + correction_request_ids(tok, prompt, c1, INSTR)
    return Episode(Problem(prompt, "5"), 0, p_ids, c1, t2p, _completion(tok, y2))


def test_turn2_prompt_equals_the_chat_template_rendering():
    tok = build_char_tokenizer()
    ep = _episode(tok, "2+3=?", "Final Answer: 6", "Final Answer: 5")
    conversation = [{"role": "user", "content": "2+3=?"}, {"role": "assistant", "content": "Final Answer: 6"},
                    {"role": "user", "content": INSTR}]
    rendered = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ep.turn2_prompt_ids) == rendered
    # the sampled turn-1 tokens (with their end-of-turn token) sit unchanged inside the turn-2 prompt
    s, e = ep.turn1_span
    assert ep.input_ids[s:e] == ep.turn1.token_ids and ep.input_ids[e - 1] == tok.eos_token_id


def test_truncated_first_answer_is_closed_by_the_template():
    tok = build_char_tokenizer()
    ep = _episode(tok, "2+3=?", "Final Ans", "Final Answer: 5", finished1=False)
    s, e = ep.turn1_span
    assert ep.input_ids[e] == tok.eos_token_id  # the template's end-of-turn, not a sampled token
    assert "Final Ans<|im_end|>\n<|im_start|>user\n" in tok.decode(ep.turn2_prompt_ids)


def test_collate_masks_cover_exactly_the_sampled_tokens():
    tok = build_char_tokenizer()
    eps = [_episode(tok, "2+3=?", "Final Answer: 5", "Final Answer: 5"),
           _episode(tok, "12+30=?", "Final Answer: 41", "Final Answer: 42")]
    batch = collate(eps, tok.pad_token_id)
    for row, ep in enumerate(eps):
        s1, e1 = ep.turn1_span
        s2, e2 = ep.turn2_span
        assert batch.turn1_mask[row].nonzero().flatten().tolist() == list(range(s1, e1))
        assert batch.turn2_mask[row].nonzero().flatten().tolist() == list(range(s2, e2))
        assert torch.allclose(batch.rollout_logprobs[row, s2:e2], torch.tensor(ep.turn2.logprobs))
        assert batch.attention_mask[row].sum().item() == len(ep.input_ids)
    assert batch.input_ids[0, len(eps[0].input_ids):].eq(tok.pad_token_id).all()
    assert len(batch.slice(1, 2)) == 1
