"""When does a padding-free batch pay? MINT's ORPO forward+backward on padded rows vs one padding-free row.

For each prompt-length spread and batch size, the same pairs are collated both ways (the packed
shared-prompt layout: one left/right-padded row per pair, or every pair back to back in one row
with a dense 4D mask) and ``compute_loss`` + ``backward`` is timed for each, alternating, on the
default text student. Padding costs tokens (every row is as long as the batch's longest prompt and
answers); a dense mask costs attention over the whole row (every query against every key of the
batch, most of them masked). Which is larger depends on the lengths and the model; this script
measures it, and ``predicted`` shows what MINT's cost estimate (:func:`mint_engine.packing.layout_costs`)
would choose.

    python benchmarks/padding_free.py --json
    python benchmarks/padding_free.py --spreads 0,200 --batch-sizes 2,4 --reps 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orpo_step import make_examples  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--spreads", default="0,100,250")
    parser.add_argument("--batch-sizes", default="2,4")
    parser.add_argument("--reps", type=int, default=2, help="timed repetitions per layout and batch")
    parser.add_argument("--prompt-tokens", type=int, default=400)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from rich.console import Console

    from mint_core.context import RunContext
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent
    from mint_engine.orpo import orpo_loss
    from mint_engine.encoding import encode_pairs
    from mint_core.decoder import mask_kind_for
    from mint_engine.packing import attention_weight, collate_packed, forward_pairs, layout_costs

    torch.set_num_threads(args.threads)
    ctx = RunContext(run_dir=Path(tempfile.mkdtemp()), seed=args.seed, console=Console(stderr=True, quiet=True))
    sm = LlamaTextStudent(LlamaTextConfig(**({"model": args.model} if args.model else {}))).load(ctx=ctx,
                                                                                                 trainable=True)
    model, kind = sm.model, mask_kind_for(sm.model)
    weight = attention_weight(model)

    def timed(batch) -> float:
        start = time.perf_counter()
        stats = forward_pairs(model, batch, mask_kind=kind)
        loss, _ = orpo_loss(stats["chosen_logps"], stats["rejected_logps"], stats["nll"], 0.1)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    rows = []
    for spread in (int(s) for s in args.spreads.split(",")):
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            examples = make_examples(sm, batch_size, prompt_tokens=args.prompt_tokens, answer_tokens=(60, 80),
                                     seed=args.seed + spread, spread=spread)
            feats = encode_pairs(sm, examples, max_length=2048, max_prompt_length=2048)
            layouts = {"padded": collate_packed(feats, pad_id=sm.pad_token_id),
                       "padding_free": collate_packed(feats, pad_id=sm.pad_token_id, padding_free=True)}
            timed(layouts["padded"])  # warm-up
            times = {name: [] for name in layouts}
            for rep in range(args.reps):
                for name in (list(layouts) if rep % 2 == 0 else list(layouts)[::-1]):
                    times[name].append(timed(layouts[name]))
            costs = layout_costs(feats, packed=True, attention_weight=weight)
            row = {"spread": spread, "batch_size": batch_size,
                   "prompt_tokens": [len(f["prompt_ids"]) for f in feats],
                   "padded_tokens": int(layouts["padded"]["input_ids"].numel()),
                   "padding_free_tokens": int(layouts["padding_free"]["input_ids"].numel()),
                   "padded_s": round(statistics.median(times["padded"]), 3),
                   "padding_free_s": round(statistics.median(times["padding_free"]), 3),
                   "predicted": "padding_free" if costs["padding_free"] < costs["padded"] else "padded"}
            row["ratio"] = round(row["padding_free_s"] / row["padded_s"], 3)
            row["measured"] = "padding_free" if row["ratio"] < 1 else "padded"
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    result = {"benchmark": "padding_free", "model": args.model or LlamaTextConfig().model, "threads": args.threads,
              "attention_weight": weight, "load_avg_1min": round(os.getloadavg()[0], 2), "rows": rows,
              "prediction_agrees": sum(r["predicted"] == r["measured"] for r in rows)}
    if args.json:
        print(json.dumps(result))
    else:
        for r in rows:
            print(r)
    return result


if __name__ == "__main__":
    main()
