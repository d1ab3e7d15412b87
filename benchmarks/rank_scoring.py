"""Time ranking-mode scoring: every label of the label space scored for each case.

Two paths of the text student's ``StudentModel.score`` on the same prompts and candidates:
``cached`` (one prompt forward, then every candidate from the prompt's KV cache) and ``naive``
(one full prompt+candidate forward per candidate). Cases alternate which path runs first, so
machine load hits both alike. ``speedup`` = naive total time / cached total time; ``max_abs_diff``
is the largest difference between the two paths' scores (sum log-probabilities).

    python benchmarks/rank_scoring.py --json                 # default llama-text student (SmolLM2-135M)
    python benchmarks/rank_scoring.py --model /path/tiny --cases 6 --labels 10 --json

The last line printed with ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orpo_step import DISEASES, PHRASES  # noqa: E402  (same MINT-shaped vocabulary)

EXTRA = ["Alport syndrome", "Fabry disease", "Pompe disease", "Gaucher disease type 1", "Niemann-Pick disease type C",
         "Tuberous sclerosis 1", "Neurofibromatosis type 1", "Fragile X syndrome", "Turner syndrome",
         "Klinefelter syndrome", "DiGeorge syndrome", "Stickler syndrome type 1", "Treacher Collins syndrome 1",
         "Pfeiffer syndrome", "Apert syndrome", "Crouzon syndrome", "Holt-Oram syndrome", "Alagille syndrome 1",
         "Beckwith-Wiedemann syndrome", "Silver-Russell syndrome"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="student.model (default: the llama-text default, SmolLM2)")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--labels", type=int, default=40)
    parser.add_argument("--prompt-tokens", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8, help="candidates per forward (both paths)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    import torch
    from rich.console import Console

    from mint_core.answers import format_answer
    from mint_core.context import RunContext
    from mint_core.types import Prompt
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent

    torch.set_num_threads(args.threads)
    ctx = RunContext(run_dir=Path(tempfile.mkdtemp(prefix="rank-bench-")), seed=args.seed,
                     console=Console(stderr=True, quiet=True))
    cfg = LlamaTextConfig(**({"model": args.model} if args.model else {}))
    sm = LlamaTextStudent(cfg).load(ctx=ctx)
    labels = (DISEASES + EXTRA)[:args.labels]
    if len(labels) < args.labels:
        raise SystemExit(f"--labels at most {len(DISEASES + EXTRA)}")
    # Exactly what evaluation scores: a one-item answer list per label, closed by a newline.
    candidates = [format_answer([name], noun="diseases") + "\n" for name in labels]
    rng = random.Random(args.seed)
    prompts = []
    for i in range(args.cases):
        notes = f"Case {i}. The patient is a {rng.randint(1, 60)}-year-old with"
        while len(sm.encode(prompt=Prompt(text=notes))["input_ids"]) < args.prompt_tokens:
            notes += " " + rng.choice(PHRASES) + ","
        prompts.append(Prompt(text=notes + " Which disease best explains these findings?"))

    times = {"cached": 0.0, "naive": 0.0}
    scores: dict[str, list[list[float]]] = {"cached": [], "naive": []}
    sm.score(prompts=prompts[:1], candidates=candidates[:2], batch_size=args.batch_size)  # warm up kernels
    for i, prompt in enumerate(prompts):
        for path in (("cached", "naive") if i % 2 == 0 else ("naive", "cached")):
            start = time.perf_counter()
            row = sm.score(prompts=[prompt], candidates=candidates, batch_size=args.batch_size,
                           cached=(path == "cached"))[0]
            times[path] += time.perf_counter() - start
            scores[path].append(row)
        print(f"case {i}: cached {times['cached']:.2f}s naive {times['naive']:.2f}s", file=sys.stderr)
    max_diff = max(abs(a - b) for rc, rn in zip(scores["cached"], scores["naive"]) for a, b in zip(rc, rn))
    same_argmax = sum(max(range(len(rc)), key=rc.__getitem__) == max(range(len(rn)), key=rn.__getitem__)
                      for rc, rn in zip(scores["cached"], scores["naive"]))
    result = {
        "benchmark": "rank_scoring", "model": cfg.model, "device": platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cases": args.cases, "labels": args.labels,
        "batch_size": args.batch_size,
        "mean_prompt_tokens": round(sum(len(sm.encode(prompt=p)["input_ids"]) for p in prompts) / len(prompts), 1),
        "cached_s": round(times["cached"], 3), "naive_s": round(times["naive"], 3),
        "speedup": round(times["naive"] / times["cached"], 3), "max_abs_diff": max_diff,
        "same_top1": f"{same_argmax}/{len(prompts)}",
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    return result


if __name__ == "__main__":
    main()
