"""Which task and temperature leave a base model room to learn: its turn-1 accuracy on candidate tasks at a few
sampling temperatures, before any training.

    python scripts/task_screen.py [--model builtin:smollm2-135m-instruct] [--problems 64]
                                  [--temperatures 0.3 0.6 1.0] [--template T] [--json PATH]

Candidates (all from training-side data; nothing here reads GSM8K's test split):
- one-digit addition ("What is 7 + 5?"), two-digit plus one-digit, two-digit addition (the built-in task's
  training problems, phrased for an instruct model);
- GSM8K: the shortest questions of its train split.
Every prompt goes through --template (data.prompt_template's form) and the model's chat template; answers are
read as the trainer reads them (engine/tasks/answer.py). Reported per task and temperature: Acc@t1, the share of
turns with an answer the trainer can find, and the mean turn length. A recipe wants Acc@t1 between 0.2 and 0.8
(room to learn, and a reward that is not all zeros) with most turns answered.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GSM8K_TRAIN = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
TEMPLATE = "{prompt}\nEnd with 'Final Answer: <number>'."


def candidate_tasks(count: int, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """task name -> `count` (prompt, gold answer) pairs."""
    from engine.tasks.arith import arith_problems
    from engine.tasks.data import load_problems

    rng = random.Random(seed)
    pairs = [(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(count)]
    tasks = {"one-digit addition": [(f"What is {a} + {b}?", str(a + b)) for a, b in pairs]}
    pairs = [(rng.randint(10, 99), rng.randint(1, 9)) for _ in range(count)]
    tasks["two-digit + one-digit"] = [(f"What is {a} + {b}?", str(a + b)) for a, b in pairs]
    # train and validation (disjoint from eval): the split this screen was first run on, so it reproduces
    train = rng.sample(arith_problems("pretrain"), count)
    tasks["two-digit addition"] = [(f"What is {p.a} + {p.b}?", p.answer) for p in train]
    if GSM8K_TRAIN.is_file():
        gsm = sorted(load_problems(str(GSM8K_TRAIN), prompt_key="question"), key=lambda p: len(p.prompt))[:count]
        tasks["GSM8K train, shortest"] = [(p.prompt, p.answer) for p in gsm]
    return tasks


def screen(engine, tokenizer, tasks, temperatures, template: str, max_tokens: int) -> dict:
    from engine.tasks.answer import answers_match, extract_answer
    from rollout.episodes import encode_prompt

    results = {}
    for name, problems in tasks.items():
        ids = [encode_prompt(tokenizer, template.format(prompt=prompt)) for prompt, _ in problems]
        for temperature in temperatures:
            started = time.perf_counter()
            turns = [c[0] for c in engine.generate(ids, n=1, max_tokens=max_tokens, temperature=temperature)]
            answers = [extract_answer(t.text) for t in turns]
            right = [answers_match(a, gold) for a, (_, gold) in zip(answers, problems)]
            n = len(problems)
            acc = sum(right) / n
            results[f"{name} @ T={temperature}"] = {
                "task": name, "temperature": temperature, "n": n, "acc_t1": acc,
                "se_acc_t1": (acc * (1 - acc) / n) ** 0.5, "answered": sum(a is not None for a in answers) / n,
                "len_t1": sum(len(t.token_ids) for t in turns) / n, "seconds": round(time.perf_counter() - started, 1),
                "examples": [t.text for t in turns[:3]]}
            row = results[f"{name} @ T={temperature}"]
            print(f"{name} @ T={temperature}: Acc@t1 {acc:.3f} ± {row['se_acc_t1']:.3f}, answered "
                  f"{row['answered']:.2f}, {row['len_t1']:.0f} tokens, {row['seconds']}s", flush=True)
    return results


def main() -> None:
    from transformers import AutoTokenizer

    from engine.models.paths import resolve_model_path
    from rollout.vllm_engine import RolloutEngine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.3, 0.6, 1.0])
    parser.add_argument("--template", default=TEMPLATE)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()
    folder = resolve_model_path(args.model, is_builder=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    engine = RolloutEngine(folder, max_model_len=1024, seed=args.seed)
    results = screen(engine, tokenizer, candidate_tasks(args.problems, args.seed), args.temperatures,
                     args.template, args.max_tokens)
    print(f"\n| task (n={args.problems} each) | T | Acc@t1 | answered | tokens |\n|---|---|---|---|---|")
    for row in results.values():
        print(f"| {row['task']} | {row['temperature']} | {row['acc_t1']:.3f} ± {row['se_acc_t1']:.3f} | "
              f"{row['answered']:.2f} | {row['len_t1']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "template": args.template, "seed": args.seed,
                                               "max_tokens": args.max_tokens, "rows": results}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
