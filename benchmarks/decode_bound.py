"""The most an exact speculative decoder could gain here: a decoding step's products against the rest.

Speculative decoding drafts C tokens a row and verifies them in one forward, keeping the greedy
ones. It pays where a step's cost does not grow with its rows (a GPU reading its weights at small
batch). On a CPU the products of a 60-row step may already run near their full rate, and then C
drafts cost nearly C times the products. This measures, in one process, on the demo's student and
its 60 test prompts (left-padded, one batch, after the prefill, as ``LlamaTextModel.generate``):

1. ``step``: a real decoding step at R rows (median over ``--steps`` steps, by the clock);
2. ``products(M)``: every ``nn.Linear`` of the step at its shape, timed alone at M rows, summed
   (the way the step runs them: reordered bf16 weights inside the student's inference, plain fp32);
3. ``rest = step - products(R)``: attention over the cache, norms, rotary, Python.

Verifying C drafts as extra one-token rows against the shared cache is the exact verifier
(benchmarks/README.md, eighth session); it shares the key/value reads, so ``rest`` is taken as not
growing with the drafts (optimistic). With every draft accepted, a step yields 1 + C tokens a row:

    bound(C) = (1 + C) * step / (products(R * (1 + C)) + rest)

No drafter accepts everything, so a real decoder stays below the bound. For a real drafter, the
run's saved greedy answers (``predictions/<role>.jsonl``) are decoded again on paper: all rows in
lockstep, as one batch; each row drafts up to C tokens by looking its last ``NGRAM`` tokens up in
what every row has written so far (prompt-lookup drafting over the batch: the demo's rows list the
same label names), and keeps the drafts that match its greedy answer (an exact verifier keeps
exactly those). Each step then costs ``products(rows drafted + R) + rest``, interpolated from the
measured products; finished rows still take a row, as in ``generate``. The estimate leaves out
the drafter's own time and the attention's growth with the extra rows, so it is optimistic too.
Steps are the base student's (an adapted student's LoRA branches add to ``rest``).

    python benchmarks/decode_bound.py --run-dir runs/rare-disease-gestalt-orpo --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficiency import cpu_flags, demo_run_dir  # noqa: E402 - the benchmarks share helpers

DRAFTS = (1, 2, 4, 8)
#: Tokens of context a draft is looked up by.
NGRAM = 3


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm: first calls allocate and reorder
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def products_seconds(model: torch.nn.Module, rows: int, dtype: torch.dtype, repeats: int) -> float:
    """Sum over the model's ``nn.Linear`` s of one call at ``rows`` rows (equal shapes timed once, counted)."""
    shapes = Counter()
    modules = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            key = (module.in_features, module.out_features)
            shapes[key] += 1
            modules.setdefault(key, module)
    total = 0.0
    for key, count in shapes.items():
        x = torch.randn(rows, key[0], dtype=dtype)
        total += count * median_seconds(lambda: modules[key](x), repeats)
    return total


def decode_step_seconds(sm, prompts, steps: int) -> float:
    """Median seconds of a greedy decoding step over the prompts' left-padded batch, after its prefill."""
    from mint_llama.kv_cache import ReservedCache, left_pad_positions

    rows = [sm.prompt_ids(p) for p in prompts]
    ids, mask = sm._left_pad(rows)
    position = left_pad_positions(mask)  # as generate numbers them
    cache = ReservedCache(capacity=ids.shape[1] + steps + 2)
    out = sm.model(input_ids=ids, attention_mask=mask, position_ids=position, cache=cache,
                   use_cache=True, logits_to_keep=1)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        token = out.logits[:, -1].float().argmax(-1, keepdim=True)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        position = position[:, -1:] + 1
        out = sm.model(input_ids=token, attention_mask=mask, position_ids=position, cache=cache,
                       use_cache=True, logits_to_keep=1)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def simulate_drafting(answers: list[list[int]], max_drafts: int, ngram: int = NGRAM) -> list[int]:
    """Rows a step for decoding ``answers`` (each row's greedy tokens) in lockstep with drafts.

    Returns one entry per step: how many rows the verifying forward runs (1 per row, plus its
    drafts). Without drafts (``max_drafts=0``) there are as many steps as the longest answer.
    """
    done = [0] * len(answers)
    rows_per_step: list[int] = []
    while any(n < len(a) for n, a in zip(done, answers)):
        # what every row has written so far, by its n-grams (later occurrences win)
        index: dict[tuple[int, ...], tuple[list[int], int, int]] = {}
        for answer, n in zip(answers, done):
            for i in range(n - ngram):
                index[tuple(answer[i:i + ngram])] = (answer, i + ngram, n)
        rows, after = 0, []
        for answer, n in zip(answers, done):
            drafts: list[int] = []
            if ngram <= n < len(answer) and max_drafts:
                hit = index.get(tuple(answer[n - ngram:n]))
                if hit is not None:
                    source, start, written = hit
                    drafts = source[start:min(start + max_drafts, written)]
            kept = 0
            while kept < len(drafts) and n + kept < len(answer) and drafts[kept] == answer[n + kept]:
                kept += 1
            rows += 1 + len(drafts)
            after.append(min(len(answer), n + kept + 1))
        done = after
        rows_per_step.append(rows)
    return rows_per_step


def decoding_seconds(rows_per_step: list[int], products: dict[int, float], rest: float) -> float:
    """Seconds for the steps, each ``products(rows) + rest``, products interpolated (linear beyond the last)."""
    import numpy as np

    sizes = sorted(products)
    times = [products[m] for m in sizes]
    total = 0.0
    for rows in rows_per_step:
        cost = times[-1] * rows / sizes[-1] if rows > sizes[-1] else float(np.interp(rows, sizes, times))
        total += cost + rest
    return total


def saved_answers(run, sm, max_new_tokens: int) -> dict[str, list[list[int]]]:
    """Each evaluated role's greedy answers in ``run``, tokenized again with the end token.

    The saved text is stripped and decoded without special tokens, so a row may differ from the
    ids ``generate`` wrote by a token at its ends; the step count moves by as much.
    """
    from mint_core.predict import evaluated_roles

    out = {}
    for role in evaluated_roles(run):
        rows = [row for row in run.load_predictions(role) if "answer" in row]
        if rows:
            out[role] = [sm.completion_ids(row["answer"], end=True)[:max_new_tokens] for row in rows]
    return out


def measure(sm, prompts, dtype: torch.dtype, steps: int, repeats: int,
            schedules: dict[str, dict[int, list[int]]]) -> dict:
    """Step, products and rest in ``dtype``; the bound; and each role's drafting ``schedules`` costed."""
    sm.inference_dtype = dtype  # the student casts itself on its next inference
    rows = len(prompts)
    with sm._inference():
        step = decode_step_seconds(sm, prompts, steps)
        products = {m: products_seconds(sm.model, m, dtype, repeats) for m in [rows * (1 + c) for c in (0, *DRAFTS)]}
    rest = step - products[rows]
    bounds = {c: (1 + c) * step / (products[rows * (1 + c)] + rest) for c in DRAFTS}
    drafting = {}
    for role, by_drafts in schedules.items():
        plain = by_drafts[0]
        drafting[role] = {"plain": {"steps": len(plain), "seconds": decoding_seconds(plain, products, rest)}}
        for c in DRAFTS:
            drafted = by_drafts[c]
            drafting[role][str(c)] = {"steps": len(drafted), "rows_per_step": sum(drafted) / len(drafted),
                                      "seconds": decoding_seconds(drafted, products, rest)}
    return {"dtype": str(dtype).replace("torch.", ""), "rows": rows, "step_s": step,
            "products_s": {str(m): s for m, s in products.items()}, "rest_s": rest,
            "bound": {str(c): b for c, b in bounds.items()}, "drafting": drafting}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", help="a demo run directory (default: build one, as efficiency.py)")
    parser.add_argument("--steps", type=int, default=24, help="decoding steps timed")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per product shape")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="the answers' cap (eval.max_new_tokens)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from mint_core import prepacked
    from mint_core.predict import open_run

    run = open_run(demo_run_dir(args.run_dir))
    data, task = run.load_data(), run.component("task")
    prompts = [task.prompt(case=c, n_answers=10) for c in data.split("test")]
    sm = run.component("student").load(ctx=run.ctx, adapter_dir=None)
    # The drafting schedules depend on the answers only: simulated once, costed in each dtype.
    schedules = {role: {c: simulate_drafting(answers, c) for c in (0, *DRAFTS)}
                 for role, answers in saved_answers(run, sm, args.max_new_tokens).items()}
    dtypes = [torch.float32, *([torch.bfloat16] if prepacked.supported() else [])]  # fp32 first: bf16 casts
    results = {"cpu_flags": cpu_flags(), "threads": torch.get_num_threads(),
               "dtypes": [measure(sm, prompts, d, args.steps, args.repeats, schedules) for d in dtypes]}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results["dtypes"]:
        rows = r["rows"]
        print(f"{r['dtype']}: step {1e3 * r['step_s']:.1f} ms at {rows} rows; products "
              f"{1e3 * r['products_s'][str(rows)]:.1f} ms, rest {1e3 * r['rest_s']:.1f} ms")
        for c in DRAFTS:
            print(f"  C={c}: products at {rows * (1 + c)} rows {1e3 * r['products_s'][str(rows * (1 + c))]:.1f} ms, "
                  f"bound {r['bound'][str(c)]:.2f}x")
        for role, sim in r["drafting"].items():
            plain = sim["plain"]
            print(f"  {role}'s answers: plain {plain['steps']} steps, {plain['seconds']:.1f} s; drafted "
                  + ", ".join(f"C={c} {sim[str(c)]['steps']} steps x {sim[str(c)]['rows_per_step']:.0f} rows "
                              f"{sim[str(c)]['seconds']:.1f} s ({plain['seconds'] / sim[str(c)]['seconds']:.2f}x)"
                              for c in DRAFTS))


if __name__ == "__main__":
    main()
