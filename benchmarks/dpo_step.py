"""Time DPO or KTO optimizer steps: MINT's packed trainer (``impl=mint``) against TRL's DPOTrainer / KTOTrainer (``impl=trl``).

Both sides run the real ``dpo`` optimizer (``DpoOptimizer.train``) on the same MINT-shaped pairs
as ``orpo_step.py`` (prompt ~400 tokens, answers 60-80 tokens), same batch size, LoRA seed, AdamW
and learning rate, one after the other in one process; a ``TrainerCallback`` times every
optimizer step (forward + backward + update, the reference forward included: MINT's is one packed
row per pair with the adapter switched off, TRL's two sequences per pair). The Trainer feeds both
the same batches in the same order, so the logged losses are compared step by step.

    python benchmarks/dpo_step.py --json                     # default llama-text student (SmolLM2-135M)
    python benchmarks/dpo_step.py --model /path/tiny --steps 3 --json
    python benchmarks/dpo_step.py --method kto --json        # KTO: each pair is two rows, answer and KL answer

KTO trains the same pairs split into a desirable and an undesirable row (batch ``--batch-size``
rows); MINT packs each row with its KL answer, TRL runs answer and KL answer as separate padded
sequences, for the policy and for the reference.

``ratio`` = median MINT step time / median TRL step time after ``--warmup`` steps; the last line
printed with ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orpo_step import add_pair_arguments, make_examples, report, student_config  # noqa: E402  (same pairs and options)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pair_arguments(parser, steps=4)
    parser.add_argument("--method", choices=["dpo", "kto"], default="dpo")
    args = parser.parse_args(argv)

    import torch
    from rich.console import Console
    from transformers import TrainerCallback

    from mint_core.context import RunContext
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent
    from mint_trl import DpoConfig, KtoConfig
    from mint_trl.optimizer import OPTIMIZERS

    torch.set_num_threads(args.threads)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    tmp = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    ctx = RunContext(run_dir=tmp, seed=args.seed, console=Console(stderr=True, quiet=not sys.stderr.isatty()))
    student = LlamaTextStudent(student_config(args))
    lo, hi = (int(x) for x in args.answer_tokens.split("-"))
    n_steps = args.steps + args.warmup
    n_pairs = args.batch_size * n_steps // (2 if args.method == "kto" else 1)  # a KTO pair is two rows
    examples = make_examples(student.load(ctx=ctx), max(n_pairs, 1), prompt_tokens=args.prompt_tokens,
                             answer_tokens=(lo, hi), seed=args.seed)
    config_class = KtoConfig if args.method == "kto" else DpoConfig
    sides = {}
    for impl in ("mint", "trl"):
        timer = StepTimer()
        config = config_class(impl=impl, batch_size=args.batch_size, max_steps=n_steps, learning_rate=args.lr,
                           lr_scheduler="constant", bf16="false", save_steps=10_000, seed=args.seed)
        torch.manual_seed(args.seed)
        out = tmp / impl
        OPTIMIZERS[args.method](config).train(student=student, examples=examples, output_dir=out, ctx=ctx, callbacks=[timer])
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        sides[impl] = {"times": timer.times[args.warmup:], "losses": [r["loss"] for r in rows if "loss" in r],
                       "margins": [r.get("rewards/margins", 0.0) for r in rows if "loss" in r]}
        print(f"{impl}: steps {[round(t, 3) for t in timer.times]}", file=sys.stderr)

    mint_t, trl_t = (statistics.median(sides[i]["times"]) for i in ("mint", "trl"))
    result = {
        "benchmark": f"{args.method}_step", "model": args.model or LlamaTextConfig().model,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "steps": args.steps,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "mint_step_s": round(mint_t, 4), "trl_step_s": round(trl_t, 4), "ratio": round(mint_t / trl_t, 4),
        "mint_step_times": [round(t, 4) for t in sides["mint"]["times"]],
        "trl_step_times": [round(t, 4) for t in sides["trl"]["times"]],
        "max_abs_loss_diff": max(abs(a - b) for a, b in zip(sides["mint"]["losses"], sides["trl"]["losses"])),
        "max_abs_margin_diff": max(abs(a - b) for a, b in zip(sides["mint"]["margins"], sides["trl"]["margins"])),
    }
    return report(result, as_json=args.json)


if __name__ == "__main__":
    main()
