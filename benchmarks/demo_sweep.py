"""The demo's training budget, measured: ORPO students trained on one run's preferences under
several (lora_layers, epochs, learning rate) settings, each evaluated on the VALIDATION split.

The demo's defaults (``mint_core.config.DEMO_DEFAULTS``) are chosen from this table; the test
split is touched only by the final ``mint run``. Per setting: generation top-1 / top-10,
well-formed share and hallucination on every validation case, calibrated ranking top-1 (mean
calibration over the same validation prompts, as ``benchmarks/time_to_transfer.py``), the final
training loss, and the training's wall and CPU seconds. Settings with the same ``lora_layers``
share one frozen-bottom cache (it depends only on the frozen weights and the pairs), so the
table's times are the epochs' cost; the cache build is timed once per placement and reported apart.

    python benchmarks/demo_sweep.py --run-dir runs/demo --grid 4:4:1e-3,4:2:2e-3 --json
    python benchmarks/demo_sweep.py --run-dir runs/demo --adapter old=runs/demo/students/orpo/adapter

``--grid`` is ``lora_layers:epochs:lr[:q[:negatives]]`` items; the optional ``q`` and ``negatives``
(``bottom`` or ``hard``) rebuild the training pairs with the ``topk`` builder's rejected side changed
(the chosen side, k, stays the run's), so the rejected side is swept like the rest; without them
the run's own preferences are used. ``--adapter NAME=DIR`` evaluates an already trained adapter as
one more row (no training). ``--lever NAME=key=value;key=value`` trains one more ORPO student at the
run's own optimizer settings (``run.config["optimizer"]``: the budget ``mint run`` trains) with those
ORPO options changed (``beta=0.5``, ``logp_tokens=decision``, ``logp_average=false``), and
``builder=onpolicy`` trains it on that builder's pairs (built in the run directory, generations
cached): issue 29's levers, each against the paper setting (``--lever paper=``). Base is always the first row. Results are also written to
``<run-dir>/sweep/sweep.json`` row by row, so a killed sweep keeps its finished rows.
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


def parse_grid(text: str) -> list[tuple[int, float, float, int | None, str | None]]:
    """``"4:4:1e-3,8:4:1e-3:5:hard"`` -> [(4, 4.0, 0.001, None, None), (8, 4.0, 0.001, 5, 'hard')]."""
    items = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            layers, epochs, lr, *rest = item.split(":")
            if len(rest) > 2 or (len(rest) == 2 and rest[1] not in {"bottom", "hard"}):
                raise ValueError(item)
            q = int(rest[0]) if rest else None
            negatives = rest[1] if len(rest) == 2 else ("bottom" if rest else None)
            items.append((int(layers), float(epochs), float(lr), q, negatives))
        except ValueError:
            raise SystemExit(f"--grid item {item!r}: expected lora_layers:epochs:lr[:q[:bottom|hard]], "
                             f"e.g. 4:2:2e-3 or 8:4:1e-3:5:hard") from None
    return items


def rebuilt_examples(run, data, task, *, q: int, negatives: str) -> list:
    """The run's ``topk`` pairs rebuilt with the rejected side ``q`` / ``negatives`` (same k, same rankings)."""
    from mint_core.config import instantiate

    section = {**run.config["builder"], "q": q, "negatives": negatives}
    if section.get("name") != "topk":
        raise SystemExit(f"q/negatives in --grid rebuild the topk builder's pairs; this run's builder is "
                         f"{section.get('name')!r}")
    builder = instantiate(run.registry, {**run.config, "builder": section}, "builder")
    return builder.build(task=task, data=data, rankings=run.load_rankings(), ctx=run.ctx)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="run with teach + prefs (built when missing)")
    parser.add_argument("--grid", default="4:4:1e-3,4:2:2e-3,4:2:3e-3")
    parser.add_argument("--adapter", action="append", default=[], help="NAME=DIR: evaluate a trained adapter too")
    parser.add_argument("--lever", action="append", default=[],
                        help="NAME=key=value;...: ORPO at the run's settings with these options (builder=NAME too)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    import torch

    from mint_core import io
    from mint_core.config import build_config
    from mint_core.types import PreferenceExample
    from mint_core.evaluation import calibration_reference, evaluate_generation
    from mint_core.metrics import ranking_from_scores
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent
    from mint_orpo import OrpoConfig
    from mint_engine.orpo import OrpoOptimizer

    torch.set_num_threads(args.threads)
    run, data, task, examples = load_run(args.run_dir)
    val, rankings = data.split("val"), run.load_rankings()
    n_answers, ks = run.n_answers(), run.ks(data)
    student_section = {k: v for k, v in run.config["student"].items() if k not in ("name", "lora_layers")}
    out_dir = args.run_dir / "sweep"
    out_dir.mkdir(exist_ok=True)
    saved = out_dir / "sweep.json"
    # A re-run keeps the rows a previous (killed) sweep finished; delete sweep.json to redo them.
    done = {row["setting"]: row for row in io.read_json(saved)["rows"]} if saved.exists() else {}
    rows: list[dict] = []

    # One cache per placement and set of pairs: the frozen bottom's states do not depend on epochs or
    # learning rate (a rebuilt q/negatives changes the rejected answers, so it gets its own).
    # Keyed by "L<cached layers>", plus "-q<q>-<negatives>" for rebuilt pairs.
    caches: dict[str, object] = {}
    build_seconds: dict[str, float] = {}

    import mint_engine.frozen_cache as frozen_cache_module

    build_for_training = frozen_cache_module.build_for_training

    pairs_suffix = [""]  # the pairs the next cache is for: "" (the run's) or "-q<q>-<negatives>"

    def shared_cache_builder(model, features, *, depth, **kwargs):
        key = f"L{depth}{pairs_suffix[0]}"
        if key not in caches:
            began = time.perf_counter()
            caches[key] = build_for_training(model, features, depth=depth, **kwargs)
            build_seconds[key] = round(time.perf_counter() - began, 1)
        return caches[key]

    frozen_cache_module.build_for_training = shared_cache_builder  # build_mint_trainer imports it at call time

    def evaluate_row(name: str, lora_layers: int, adapter: Path | None, extra: dict) -> None:
        if name in done:
            rows.append(done[name])
            return
        student = LlamaTextStudent(LlamaTextConfig(**student_section, lora_layers=lora_layers))
        model = student.load(ctx=run.ctx, adapter_dir=adapter)
        began = time.perf_counter()
        gen, _ = evaluate_generation(student_model=model, task=task, data=data, cases=val, rankings=rankings,
                                     n_answers=n_answers, ks=ks, batch_size=32, max_new_tokens=160)
        reference = calibration_reference(method="mean", student_model=model, task=task, data=data,
                                          n_answers=n_answers, batch_size=32, cases=val)
        raw = [{"case_id": c.id, "true_label_ids": list(c.label_ids), "label_scores": s}
               for c, s in zip(val, reference["reference_scores"])]
        rank, _ = ranking_from_scores(predictions=raw, label_ids=data.labels.ids, vector=reference["vector"],
                                      ks=ks, n_answers=n_answers)
        row = {"setting": name, **extra, "val_cases": len(val),
               "top1": round(gen["top1"], 3), "top1_ci": [round(x, 3) for x in gen["top1_ci"]],
               f"top{ks[-1]}": round(gen[f"top{ks[-1]}"], 3), "well_formed": round(gen["well_formed"], 3),
               "hallucination": round(gen["hallucination_rate"], 3), "rank_top1": round(rank["rank_top1"], 3),
               "rank_top1_ci": [round(x, 3) for x in rank["rank_top1_ci"]],
               "eval_seconds": round(time.perf_counter() - began, 1)}
        rows.append(row)
        io.write_json(out_dir / "sweep.json", {"rows": rows, "cache_build_seconds": build_seconds})
        print(f"{name}: {row}", file=sys.stderr, flush=True)

    evaluate_row("base", 0, None, {})
    for item in args.adapter:
        name, _, directory = item.partition("=")
        evaluate_row(name, int(run.config["student"].get("lora_layers") or 0), Path(directory), {"trained": "given"})
    for lora_layers, epochs, lr, q, negatives in parse_grid(args.grid):
        pairs_suffix[0] = "" if q is None else f"-q{q}-{negatives}"
        name = f"L{lora_layers}-e{epochs:g}-lr{lr:g}{pairs_suffix[0]}"
        if name in done:
            rows.append(done[name])
            continue
        student = LlamaTextStudent(LlamaTextConfig(**student_section, lora_layers=lora_layers))
        cfg = OrpoConfig(epochs=epochs, max_steps=-1, learning_rate=lr, batch_size=args.batch_size,
                         nll_on_prompt=False, cache_frozen="auto", save_steps=10**6, seed=int(run.config["seed"]))
        target = out_dir / name
        if target.exists():
            import shutil

            shutil.rmtree(target)  # a fresh training, never a resumed one
        built_before = dict(build_seconds)
        began, cpu_began = time.perf_counter(), time.process_time()
        pairs = examples if q is None else rebuilt_examples(run, data, task, q=q, negatives=negatives)
        result = OrpoOptimizer(cfg).train(student=student, examples=pairs, output_dir=target, ctx=run.ctx)
        train_s, train_cpu = time.perf_counter() - began, time.process_time() - cpu_began
        built_here = sum(s for label, s in build_seconds.items() if label not in built_before)
        train_s -= built_here  # the epochs' cost; the build is reported once, in cache_build_seconds
        evaluate_row(name, lora_layers, result.adapter_dir,
                     {"lora_layers": lora_layers, "epochs": epochs, "lr": lr,
                      "q": q if q is not None else (run.config["builder"].get("q") or n_answers),
                      "negatives": negatives or run.config["builder"].get("negatives"),
                      "steps": int(result.metrics.get("global_step", 0)),
                      "train_loss": round(result.metrics.get("train_loss", float("nan")), 4),
                      "train_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu, 1)})
    for item in args.lever:
        name, _, text = item.partition("=")
        if name in done:
            rows.append(done[name])
            continue
        overrides = dict(part.split("=", 1) for part in filter(None, (p.strip() for p in text.split(";"))))
        builder = overrides.pop("builder", None)
        pairs_suffix[0] = f"-{builder}" if builder else ""
        pairs = examples if not builder else [PreferenceExample.from_dict(row)
                                              for row in io.read_jsonl(run.prefs(builder, quiet=True))]
        section = {k: v for k, v in run.config["optimizer"].items() if k != "name"}
        options = {**section, **overrides, "save_steps": 10**6, "seed": int(run.config["seed"])}
        cfg = build_config(OrpoConfig, options, section="optimizer", component="orpo")
        lora_layers = int(run.config["student"].get("lora_layers") or 0)
        target = out_dir / name
        if target.exists():
            import shutil

            shutil.rmtree(target)
        built_before = dict(build_seconds)
        began = time.perf_counter()
        result = OrpoOptimizer(cfg).train(student=LlamaTextStudent(LlamaTextConfig(**student_section,
                                                                                   lora_layers=lora_layers)),
                                          examples=pairs, output_dir=target, ctx=run.ctx)
        train_s = time.perf_counter() - began - sum(s for k, s in build_seconds.items() if k not in built_before)
        evaluate_row(name, lora_layers, result.adapter_dir,
                     {"lever": text or "paper setting", "pairs": len(pairs),
                      "steps": int(result.metrics.get("global_step", 0)),
                      "train_loss": round(result.metrics.get("train_loss", float("nan")), 4),
                      "train_seconds": round(train_s, 1)})
    result = {"benchmark": "demo_sweep", "threads": torch.get_num_threads(), "train_pairs": len(examples),
              "val_cases": len(val), "cache_build_seconds": build_seconds, "rows": rows,
              "load_avg_1min": round(os.getloadavg()[0], 2)}
    return report(result, as_json=args.json)


if __name__ == "__main__":
    main()
