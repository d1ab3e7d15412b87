"""Time ranking-mode scoring: every label of the label space scored for each case.

Two paths of the text student's ``StudentModel.score`` on the same prompts and candidates:
``cached`` (one prompt forward, then every candidate from the prompt's KV cache) and ``naive``
(one full prompt+candidate forward per candidate). For every case the two paths run back to back,
alternating which goes first, so machine load hits both alike; ``speedup`` is the median over
cases of naive time / cached time (totals and medians are reported too).

``max_abs_diff`` is the largest difference between the two paths' scores (sum log-probabilities)
in float64, checked on ``--fp64-cases`` cases with a float64 copy of the student: it tests the
method (KV cache, shared prefix, packed candidates), which is exact. The fp32 difference of the
timed runs is reported as ``max_abs_diff_fp32``: it is fp32 rounding of the model (different
matmul/attention shapes), of the size of the naive path's own spread across batch sizes
(``naive_spread_fp32``: naive at one candidate per forward vs ``--batch-size``, case 0).

    python benchmarks/rank_scoring.py --json                 # default llama-text student (SmolLM2-135M)
    python benchmarks/rank_scoring.py --model /path/tiny --cases 6 --labels 10 --json

The last line printed with ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orpo_step import DISEASES, PHRASES, report  # noqa: E402  (same MINT-shaped vocabulary)

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
    parser.add_argument("--fp64-cases", type=int, default=2, help="cases for the float64 parity check (0: skip)")
    parser.add_argument("--fp64-labels", type=int, default=10, help="labels scored in the float64 parity check")
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

    times: dict[str, list[float]] = {"cached": [], "naive": []}
    cpu_times: dict[str, list[float]] = {"cached": [], "naive": []}
    scores: dict[str, list[list[float]]] = {"cached": [], "naive": []}
    for cached in (True, False):  # warm up kernels of both paths
        sm.score(prompts=prompts[:1], candidates=candidates[:2], batch_size=args.batch_size, cached=cached)
    load_before = os.getloadavg()
    for i, prompt in enumerate(prompts):
        for path in (("cached", "naive") if i % 2 == 0 else ("naive", "cached")):
            start, cpu_start = time.perf_counter(), time.process_time()
            row = sm.score(prompts=[prompt], candidates=candidates, batch_size=args.batch_size,
                           cached=(path == "cached"))[0]
            times[path].append(time.perf_counter() - start)
            cpu_times[path].append(time.process_time() - cpu_start)
            scores[path].append(row)
        print(f"case {i}: cached {times['cached'][-1]:.2f}s naive {times['naive'][-1]:.2f}s "
              f"(x{times['naive'][-1] / times['cached'][-1]:.1f})", file=sys.stderr)
    load_after = os.getloadavg()
    diff_fp32 = max(abs(a - b) for rc, rn in zip(scores["cached"], scores["naive"]) for a, b in zip(rc, rn))
    same_argmax = sum(max(range(len(rc)), key=rc.__getitem__) == max(range(len(rn)), key=rn.__getitem__)
                      for rc, rn in zip(scores["cached"], scores["naive"]))
    # Yardstick for the fp32 figure: the naive path against itself, one candidate per forward vs
    # --batch-size per forward (same function, other matmul/attention shapes) on case 0.
    few = candidates[:args.fp64_labels]
    naive_spread = max(abs(a - b) for a, b in zip(
        sm.score(prompts=prompts[:1], candidates=few, batch_size=1, cached=False)[0],
        sm.score(prompts=prompts[:1], candidates=few, batch_size=args.batch_size, cached=False)[0]))
    diff_fp64 = fp64_parity(cfg, ctx, prompts[:args.fp64_cases], candidates[:args.fp64_labels], args.batch_size)
    ratios = [n / c for c, n in zip(times["cached"], times["naive"])]
    result = {
        "benchmark": "rank_scoring", "model": cfg.model, "cpu": cpu_model(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_avg_1min": [round(load_before[0], 2), round(load_after[0], 2)],
        "cases": args.cases, "labels": args.labels, "batch_size": args.batch_size,
        "mean_prompt_tokens": round(sum(len(sm.encode(prompt=p)["input_ids"]) for p in prompts) / len(prompts), 1),
        "mean_candidate_tokens": round(sum(len(sm.completion_ids(c, end=False)) for c in candidates)
                                       / len(candidates), 1),
        "cached_median_s": round(statistics.median(times["cached"]), 3),
        "naive_median_s": round(statistics.median(times["naive"]), 3),
        "cached_total_s": round(sum(times["cached"]), 3), "naive_total_s": round(sum(times["naive"]), 3),
        "speedup": round(statistics.median(ratios), 3),
        "speedup_range": [round(min(ratios), 2), round(max(ratios), 2)],
        "speedup_total": round(sum(times["naive"]) / sum(times["cached"]), 3),
        "cpu_speedup": round(statistics.median(n / c for c, n in zip(cpu_times["cached"], cpu_times["naive"])), 3),
        "max_abs_diff": diff_fp64, "max_abs_diff_fp64": diff_fp64, "max_abs_diff_fp32": diff_fp32,
        "naive_spread_fp32": naive_spread,
        "fp64_check": f"{min(args.fp64_cases, len(prompts))} cases x {min(args.fp64_labels, len(candidates))} labels",
        "same_top1": f"{same_argmax}/{len(prompts)}",
    }
    return report(result, as_json=args.json)


def fp64_parity(cfg, ctx, prompts: list, candidates: list[str], batch_size: int) -> float | None:
    """Largest cached-vs-naive score difference with a float64 copy of the student (None: skipped).

    In float64 the model's own rounding is ~1e-15, so any difference left is the method's.
    """
    if not prompts or not candidates:
        return None
    from mint_llama.student import LlamaTextStudent

    sm64 = LlamaTextStudent(dataclasses.replace(cfg, dtype="float64", device="cpu")).load(ctx=ctx)
    cached = sm64.score(prompts=prompts, candidates=candidates, batch_size=batch_size, cached=True)
    naive = sm64.score(prompts=prompts, candidates=candidates, batch_size=batch_size, cached=False)
    return max(abs(a - b) for rc, rn in zip(cached, naive) for a, b in zip(rc, rn))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
