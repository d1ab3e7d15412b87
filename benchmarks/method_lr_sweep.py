"""One method's learning rate for ``mint compare``, chosen on the VALIDATION split.

A comparison is fair only when each method trains at its own learning rate: at ORPO's rate DPO
from SFT collapses (well-formed 0, every listed name a hallucination). This trains ``--method``
at each of ``--lrs`` with everything else as ``mint compare`` would give it (the run's shared
optimizer options: epochs, batch, ...; DPO starts from the run's SFT adapter when there is one,
as in the grid), each in ``<run-dir>/lr-sweep/<method>-lr<lr>/`` on the run's own teacher and
preferences, and evaluates every adapter in generation mode on the validation cases. The test
split is not touched. Rows are written to ``<run-dir>/lr-sweep/<method>.json`` as they finish, and
a re-run reuses finished trainings (the pipeline's stage fingerprints).

    mint compare --run-dir RUN --methods base,sft          # teacher, preferences, the SFT adapter
    python benchmarks/method_lr_sweep.py --run-dir RUN --method dpo --lrs 5e-5,2e-4,5e-4 --json
    python benchmarks/method_lr_sweep.py --run-dir RUN --method kto --lrs 5e-5 --from-sft yes --json

``--from-sft``: ``auto`` starts DPO from the SFT adapter, as the grid does, and every other method
from the base model; ``yes`` starts any method that has ``init_adapter`` from it (rows go to
``<method>-from-sft.json``); ``no`` starts all from the base model (DPO's rows then go to
``dpo-from-base.json``).

Pass the chosen rate to the grid with ``mint compare compare.learning_rates=dpo=2e-4``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from orpo_step import report  # noqa: E402
from time_to_transfer import load_run  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="run with teach done (built when missing)")
    parser.add_argument("--method", required=True, help="optimizer name (dpo, kto, sft, orpo, ...)")
    parser.add_argument("--lrs", required=True, help="comma-separated learning rates, e.g. 5e-5,2e-4")
    parser.add_argument("--from-sft", choices=("auto", "yes", "no"), default="auto",
                        help="start from the run's SFT adapter: auto = dpo only (as mint compare), yes, no")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    import torch

    from mint_core import io
    from mint_core.compare import seed_run, shared_optimizer_options
    from mint_core.evaluation import EvalConfig, evaluate_generation

    torch.set_num_threads(args.threads)
    parent, data, task, _ = load_run(args.run_dir)
    val, rankings = data.split("val"), parent.load_rankings()
    if not val:
        raise SystemExit(f"{args.run_dir}: the task has no validation split to choose a learning rate on")
    n_answers, ks = parent.n_answers(), parent.ks(data)
    eval_cfg = EvalConfig(**parent.config["eval"])  # the run's own generation settings, as mint eval
    shared = shared_optimizer_options(parent)
    sft = parent.student_dir("sft") / "adapter"
    out = args.run_dir / "lr-sweep"
    out.mkdir(exist_ok=True)
    lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    from_sft = args.from_sft == "yes" or (args.from_sft == "auto" and args.method == "dpo" and sft.is_dir())
    if from_sft and not sft.is_dir():
        raise SystemExit(f"--from-sft yes: no SFT adapter at {sft}; run `mint compare --run-dir {args.run_dir} "
                         f"--methods base,sft` first")
    if from_sft and "init_adapter" not in {f for f, *_ in parent.registry.get("optimizer", args.method).config_fields()}:
        raise SystemExit(f"--from-sft yes: optimizer {args.method!r} has no init_adapter option")
    # Files and folders keep the plain method name for the grid's own start (DPO: SFT; others: base).
    tag = args.method if from_sft == (args.method == "dpo") else f"{args.method}-from-{'sft' if from_sft else 'base'}"
    saved = out / f"{tag}.json"
    # Rows of earlier sweeps at other rates are kept, so a table grows over several calls.
    earlier = io.read_json(saved)["rows"] if saved.exists() else []
    rows = [r for r in earlier if r["lr"] not in lrs]
    # A re-run reuses a finished training (seconds ~0): keep the seconds it took when it ran.
    trained_seconds = {r["lr"]: r.get("train_seconds", 0.0) for r in earlier}
    for lr in lrs:
        section = {**parent.optimizer_section(args.method, shared), "learning_rate": lr}
        if from_sft:
            section["init_adapter"] = str(sft)
        child = seed_run(parent, int(parent.config["seed"]), run_dir=out / f"{tag}-lr{lr:g}")
        began = time.perf_counter()
        student_dir = child.train(section=section)
        train_seconds = time.perf_counter() - began
        if train_seconds < 5 and trained_seconds.get(lr):
            train_seconds = trained_seconds[lr]
        result = io.read_json(student_dir / "result.json")
        model = child.component("student").load(ctx=child.ctx, adapter_dir=Path(result["adapter_dir"]))
        gen, _ = evaluate_generation(student_model=model, task=task, data=data, cases=val, rankings=rankings,
                                     n_answers=n_answers, ks=ks, batch_size=eval_cfg.batch_size,
                                     max_new_tokens=eval_cfg.max_new_tokens)
        top = f"top{ks[-1]}"
        rows.append({"lr": lr, "from": "sft" if from_sft else "base", "val_cases": len(val), "top1": round(gen["top1"], 3),
                     "top1_ci": [round(x, 3) for x in gen["top1_ci"]], top: round(gen[top], 3),
                     "well_formed": round(gen["well_formed"], 3), "hallucination": round(gen["hallucination_rate"], 3),
                     "train_loss": round(float(result["metrics"].get("train_loss", float("nan"))), 4),
                     "train_seconds": round(train_seconds, 1)})
        rows.sort(key=lambda r: r["lr"])
        io.write_json(saved, {"method": args.method, "shared": shared, "rows": rows})
        print(f"{args.method} lr {lr:g}: {next(r for r in rows if r['lr'] == lr)}", file=sys.stderr, flush=True)
    best = max(rows, key=lambda r: (r["top1"], r[f"top{ks[-1]}"], r["well_formed"]))
    return report({"benchmark": "method_lr_sweep", "method": args.method, "threads": torch.get_num_threads(),
                   "rows": rows, "best_lr": best["lr"], "load_avg_1min": round(os.getloadavg()[0], 2)},
                  as_json=args.json)


if __name__ == "__main__":
    main()
