"""Time to transfer: training time until the ORPO student's accuracy on the VALIDATION split exceeds
the base model's by ``--margin`` (10 points), MINT's trainer with its speed options against TRL's
ORPOTrainer, on the same preferences and learning rate.

- Data: a run directory where ``mint teach`` and ``mint prefs`` have run (the demo: hpo-sim, 20
  diseases, 160 training pairs); built here with the run's own pipeline when missing.
- Sides: ``mint`` = ``optimizer.impl=mint`` with ``student.lora_layers`` (``--lora-layers``), the
  frozen-bottom cache and answer-only NLL; ``trl`` = ``optimizer.impl=trl`` (TRL's ORPOTrainer,
  LoRA on every layer, NLL over prompt + answer as TRL defines it). Same lr, batch, epochs budget, seed.
- Accuracy (``--criterion``), checked every ``--eval-every`` optimizer steps:
  ``rank`` (the issue's): every label is scored by the student's log-likelihood of answering it
  (the evaluation's ranking mode, ``StudentModel.score``), then *mean-calibrated*: each label's
  mean score over the validation prompts is subtracted, so a label the model likes for every case
  stops winning every case; top-1 of the calibrated scores. ``generation``: the student writes its
  list (greedy, as ``mint evaluate``) and the first name must be the true disease: generation
  top-1. Top-1, not top-10: a student that has only learned the format, listing 10 of 20 names at
  random, already has top-10 0.5 over a base that writes no list; its top-1 stays at chance (0.05).
  Measured: ``rank`` does not move with this training (benchmarks/README.md), ``generation`` does.
- Time: wall (and CPU) seconds of ``optimizer.train`` (model load, encoding, cache build and steps)
  up to the check that passes, with the checks' own time taken out. A side that never passes within
  ``--epochs`` reports ``null`` and its last accuracy.

    python benchmarks/time_to_transfer.py --run-dir runs/demo --json
    python benchmarks/time_to_transfer.py --run-dir runs/demo --side mint --json   # one side only

The last line printed with ``--json`` is one JSON object: ``ratio`` = mint time / trl time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from orpo_step import report  # noqa: E402


def calibrated_top1(scores, truth: list[set[int]]) -> float:
    """Top-1 accuracy after subtracting each label's mean score over the cases (``scores``: cases x labels)."""
    import numpy as np

    matrix = np.asarray(scores, dtype=float)
    calibrated = matrix - matrix.mean(axis=0, keepdims=True)
    best = calibrated.argmax(axis=1)
    return float(np.mean([int(b) in t for b, t in zip(best, truth)]))


def load_run(run_dir: Path):
    """(run, data, task, examples) of a run with teach + prefs done (run here when missing)."""
    from rich.console import Console

    from mint_core import io
    from mint_core.config import DEMO_DEFAULTS, load_config_file, resolve
    from mint_core.pipeline import Run
    from mint_core.registry import get_registry
    from mint_core.types import PreferenceExample

    registry = get_registry()
    saved = run_dir / "config.yaml"
    config = (resolve(registry, file=load_config_file(saved)) if saved.exists()
              else resolve(registry, soft=DEMO_DEFAULTS))  # the demo's configuration, as `mint run`
    run = Run(registry=registry, config=config, run_dir=run_dir, console=Console(stderr=True, quiet=True))
    if not (run_dir / "cases.jsonl").exists():
        run.save_config()
        run.teach()
    prefs = run.prefs()
    data = run.load_data()
    examples = [PreferenceExample.from_dict(row) for row in io.read_jsonl(prefs)]
    return run, data, run.component("task"), examples


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="run with teach + prefs (built when missing)")
    parser.add_argument("--side", choices=["both", "mint", "trl"], default="both")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=3, help="training budget per side")
    parser.add_argument("--lora-layers", type=int, default=8, help="MINT side: LoRA on the top N layers")
    parser.add_argument("--eval-every", type=int, default=10, help="optimizer steps between validation checks")
    parser.add_argument("--criterion", choices=["rank", "generation"], default="rank",
                        help="rank: calibrated rank-top-1; generation: generation top-1 (see the docstring)")
    parser.add_argument("--margin", type=float, default=0.10, help="top-1 above base to reach")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    import torch
    from transformers import TrainerCallback

    from mint_core.evaluation import evaluate_generation, ranking_candidates
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextModel, LlamaTextStudent
    from mint_orpo import OrpoConfig
    from mint_engine.orpo import OrpoOptimizer

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    run, data, task, examples = load_run(args.run_dir)
    val = data.split("val")
    n_answers = run.n_answers()
    prompts = [task.prompt(case=case, n_answers=n_answers) for case in val]
    candidates = ranking_candidates(task, data.labels)
    index = {label_id: i for i, label_id in enumerate(data.labels.ids)}
    truth = [{index[t] for t in case.label_ids if t in index} for case in val]
    student_section = {k: v for k, v in run.config["student"].items() if k != "name"}

    def accuracy(sm) -> float:
        was_training = sm.model.training
        sm.model.eval()
        with torch.no_grad():
            if args.criterion == "generation":
                metrics, _ = evaluate_generation(student_model=sm, task=task, data=data, cases=val, rankings=None,
                                                 n_answers=n_answers, ks=[1], batch_size=len(val), max_new_tokens=160)
                acc = metrics["top1"]
            else:
                acc = calibrated_top1(sm.score(prompts=prompts, candidates=candidates, batch_size=8), truth)
        sm.model.train(was_training)
        return acc

    base_student = LlamaTextStudent(LlamaTextConfig(**student_section))
    base_sm = base_student.load(ctx=run.ctx)
    base = accuracy(base_sm)
    del base_sm
    measure = "calibrated rank-top-1" if args.criterion == "rank" else "generation top-1"
    print(f"base {measure} on {len(val)} validation cases: {base:.3f}", file=sys.stderr)

    class Checkpoint(TrainerCallback):
        """Every ``eval_every`` steps: the student's validation accuracy, off the clock; stop once it passes."""

        def __init__(self, tokenizer, config):
            self.tokenizer, self.config = tokenizer, config
            self.eval_wall = self.eval_cpu = 0.0
            self.began = self.cpu_began = 0.0  # set when training starts
            self.history: list[tuple[int, float]] = []
            self.passed_at: tuple[float, float] | None = None

        def on_step_end(self, args_, state, control, model=None, **kwargs):
            if state.global_step % args.eval_every and state.global_step < state.max_steps:
                return
            began, cpu_began = time.perf_counter(), time.process_time()
            acc = accuracy(LlamaTextModel(model=model, tokenizer=self.tokenizer, config=self.config))
            self.eval_wall += time.perf_counter() - began
            self.eval_cpu += time.process_time() - cpu_began
            self.history.append((state.global_step, round(acc, 3)))
            print(f"  step {state.global_step}: {measure} {acc:.3f} (base {base:.3f})", file=sys.stderr)
            if acc > base + args.margin + 1e-9:
                self.passed_at = (time.perf_counter() - self.began - self.eval_wall,
                                  time.process_time() - self.cpu_began - self.eval_cpu)
                control.should_training_stop = True

    def side(impl: str) -> dict:
        lora_layers = args.lora_layers if impl == "mint" else 0
        config = LlamaTextConfig(**{**student_section, "lora_layers": lora_layers})
        student = LlamaTextStudent(config)
        cfg = OrpoConfig(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, impl=impl,
                         nll_on_prompt=impl == "trl", cache_frozen="auto" if impl == "mint" else "false",
                         save_steps=10**6, seed=int(run.config["seed"]))
        tokenizer = student.load(ctx=run.ctx).tokenizer
        probe = Checkpoint(tokenizer, config)
        work = args.run_dir / "time_to_transfer"
        work.mkdir(parents=True, exist_ok=True)
        # A fresh folder of this process's own: never a resumed run, and two runs on one run
        # directory no longer delete each other's checkpoints. Only the timings are kept.
        with tempfile.TemporaryDirectory(prefix=f"{impl}-", dir=work, ignore_cleanup_errors=True) as out:
            probe.began, probe.cpu_began = time.perf_counter(), time.process_time()
            OrpoOptimizer(cfg).train(student=student, examples=examples, output_dir=Path(out), ctx=run.ctx,
                                     callbacks=[probe])
        wall = cpu = None
        if probe.passed_at is not None:
            wall, cpu = probe.passed_at
        return {"seconds": None if wall is None else round(wall, 1), "cpu_seconds": None if cpu is None else round(cpu, 1),
                "final_accuracy": probe.history[-1][1] if probe.history else None, "history": probe.history,
                "lora_layers": lora_layers}

    sides = ("mint", "trl") if args.side == "both" else (args.side,)
    results = {impl: side(impl) for impl in sides}
    result = {"benchmark": "time_to_transfer", "criterion": args.criterion, "val_cases": len(val), "labels": len(data.labels),
              "train_pairs": len(examples), "base_accuracy": round(base, 3), "target": round(base + args.margin, 3),
              "lr": args.lr, "batch_size": args.batch_size, "epochs_budget": args.epochs,
              "eval_every": args.eval_every, "threads": torch.get_num_threads(),
              "load_avg_1min": round(os.getloadavg()[0], 2)}
    for impl, res in results.items():
        result.update({f"{impl}_{key}": value for key, value in res.items()})
    if len(results) == 2:
        m, t = results["mint"]["seconds"], results["trl"]["seconds"]
        result["ratio"] = round(m / t, 3) if m is not None and t is not None else None
    return report(result, as_json=args.json)


if __name__ == "__main__":
    main()
