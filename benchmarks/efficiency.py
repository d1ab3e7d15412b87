"""How close MINT runs to this machine's own matrix rate: training, frozen-bottom cache, generation, ranking.

In one process, on the demo's work (hpo-sim preferences, SmolLM2-135M, LoRA on the top 8 layers,
ORPO at the shipped settings), this measures:

- ``matmul``: ``torch.matmul`` GFLOP/s on this machine's threads for fp32 and, where the CPU or GPU
  has native bf16, bf16, at the shapes each workload runs (a decoder layer's projections and the
  vocabulary projection, for a training row block of 1024 tokens and a generation batch), the best
  of five 0.4-second windows (the worst beside it in the JSON: the spread of a shared machine);
- for each workload, the FLOPs of the work done, counted from the model's configuration and the
  token counts actually processed (:func:`layer_flops` and friends: forward, and backward where
  training runs it; frozen weights get no weight gradient; padding is not counted), its wall time,
  and ``gemm_fraction`` = achieved FLOP/s / the matmul rate of the same dtype at the same shapes
  (FLOP-weighted over layer and vocabulary products). The ratios are the figures that carry across
  machines; absolute times stand beside them.

Generation runs twice on the same cases: in fp32 (the reference numerics) and in the student's
``inference_dtype=auto`` (bf16 where native); the JSON says how many answers are identical.

    python benchmarks/efficiency.py --json                 # builds the demo's preferences in a temp dir
    python benchmarks/efficiency.py --run-dir runs/demo --steps 20 --cases 60 --json

The last line printed with ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


# -- analytic FLOPs ---------------------------------------------------------------------------
def shapes(config) -> dict[str, int]:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"h": config.hidden_size, "i": config.intermediate_size, "layers": config.num_hidden_layers,
            "q": heads * head_dim, "kv": config.num_key_value_heads * head_dim, "vocab": config.vocab_size}


def linear_params(s: dict[str, int]) -> int:
    """Weights in one decoder layer's projections (q, k, v, o, gate, up, down)."""
    return s["h"] * s["q"] * 2 + s["h"] * s["kv"] * 2 + 3 * s["h"] * s["i"]


def lora_params(s: dict[str, int], r: int) -> int:
    """LoRA weights on every projection of one layer (A: in x r, B: r x out)."""
    return r * ((s["h"] + s["q"]) * 2 + (s["h"] + s["kv"]) * 2 + 2 * (s["h"] + s["i"]) + (s["i"] + s["h"]))


def layer_flops(s: dict[str, int], tokens: int, context: int) -> dict[str, int]:
    """Forward FLOPs of one decoder layer over ``tokens`` tokens that attend to ``context`` positions
    in all (the sum over tokens of each one's visible length)."""
    return {"linear": 2 * linear_params(s) * tokens, "attention": 4 * s["q"] * context}


def causal_context(n: int, offset: int = 0) -> int:
    """Sum of visible lengths of ``n`` causal tokens that follow ``offset`` visible ones."""
    return n * offset + n * (n + 1) // 2


def training_step_flops(s: dict[str, int], pairs: list[tuple[int, int, int]], *, top: int, r: int,
                        nll_on_prompt: bool = True) -> dict[str, float]:
    """One packed ORPO step over ``pairs`` (prompt, chosen, rejected token counts), the bottom
    ``layers - top`` layers read from the frozen-bottom cache.

    Top layers: frozen projections forward + input gradient (2x forward), LoRA forward + input and
    weight gradients (3x), attention forward + backward (3x). Vocabulary: forward + input gradient
    (the head is frozen) on every scored token: the answers', and with ``nll_on_prompt`` (ORPO's
    default, as TRL) the prompt's too, all but its first token (its NLL term reads them).
    """
    out = {"linear": 0.0, "attention": 0.0, "lora": 0.0, "vocab": 0.0}
    for p, c, rj in pairs:
        tokens = p + c + rj
        context = causal_context(p) + causal_context(c, p) + causal_context(rj, p)
        f = layer_flops(s, tokens, context)
        out["linear"] += top * 2 * f["linear"]
        out["attention"] += top * 3 * f["attention"]
        out["lora"] += top * 3 * 2 * lora_params(s, r) * tokens
        out["vocab"] += 2 * 2 * s["h"] * s["vocab"] * (c + rj + (p - 1 if nll_on_prompt else 0))
    return out


# -- measurement helpers ----------------------------------------------------------------------
def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, device: str, seconds: float = 0.4,
                windows: int = 5) -> tuple[float, float]:
    """Best and worst GFLOP/s of ``[m, k] x [k, n]`` over ``windows`` timed windows of ``seconds``.

    The best window is the reference. On a shared 2-core VM (2026-12-06, AVX2 host) consecutive
    readings at one shape were 78 and 105 GFLOP/s, and a single 1-second reading moved the
    training gemm_fraction from 0.58 to 1.05 between two runs; against the best window the
    fraction is the conservative one.
    """
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    readings = []
    for _ in range(windows):
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            runs += 1
        if device == "cuda":
            torch.cuda.synchronize()
        readings.append(2 * m * k * n * runs / (time.perf_counter() - start) / 1e9)
    return max(readings), min(readings)


def reference_rate(rates: dict[str, float], flops: dict[str, float]) -> float:
    """The matmul rate this workload would reach if every FLOP ran at its shape's measured rate:
    vocabulary FLOPs at the vocabulary rate, everything else at the layer rate."""
    vocab = flops.get("vocab", 0.0)
    rest = sum(flops.values()) - vocab
    return sum(flops.values()) / (rest / rates["layer"] + vocab / rates["vocab"])


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
    return [f for f in wanted if f in flags]


def demo_run_dir(path: str | None) -> Path:
    if path:
        return Path(path)
    run_dir = Path(tempfile.mkdtemp(prefix="mint-efficiency-"))
    subprocess.run([sys.executable, "-m", "mint_core.cli", "prefs", "--run-dir", str(run_dir)],
                   check=True, cwd=REPO)
    return run_dir


def print_profile(prof: torch.profiler.profile, steps: int, top: int = 18) -> None:
    """The profiled steps' top ops by self CPU time, then the matrix products by input shape (stderr)."""
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    print(f"profile of {steps} training step(s), self CPU time:\n{table}", file=sys.stderr)
    products = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in ("aten::mm", "aten::bmm")]
    products.sort(key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in products)
    print("matrix products by input shape (share of their self CPU time):", file=sys.stderr)
    for e in products[:top]:
        print(f"  {e.key:10s} {e.self_cpu_time_total / total:6.1%} {e.count:5d} calls  {e.input_shapes}", file=sys.stderr)


# -- workloads --------------------------------------------------------------------------------
def measure_training(run_dir: Path, steps: int, warmup: int, profile: int = 0,
                     compile_layers: bool = False, attention: str = "auto") -> tuple[dict, object]:
    from transformers import TrainerCallback

    from mint_core import io
    from mint_core.context import RunContext
    from mint_core.types import PreferenceExample
    from mint_engine.encoding import encode_pairs
    from mint_engine.optimizer import build_trainer
    from mint_engine.options import use_bf16
    from mint_engine.orpo import OrpoTrainer
    from mint_llama.config import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent
    from mint_orpo import OrpoConfig

    ctx = RunContext(run_dir=Path(tempfile.mkdtemp(prefix="mint-eff-ctx-")))
    student_cfg = LlamaTextConfig(lora_layers=8)
    sm = LlamaTextStudent(student_cfg).load(ctx=ctx, trainable=True)
    examples = io.read_jsonl(run_dir / "preferences.jsonl", parse=PreferenceExample.from_dict)
    cfg = OrpoConfig(epochs=4, learning_rate=1e-3, batch_size=4, max_steps=warmup + steps, save_steps=10 ** 6,
                     compile=str(compile_layers).lower(), attention=attention)
    feats = encode_pairs(sm, examples, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
    out_dir = Path(tempfile.mkdtemp(prefix="mint-eff-train-"))
    start = time.perf_counter()
    trainer = build_trainer(cfg, sm, feats, output_dir=out_dir, ctx=ctx, trainer_cls=OrpoTrainer)
    build_s = time.perf_counter() - start
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.t = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.t)

    class Profile(TrainerCallback):
        """torch.profiler over ``profile`` steps after the warm-up ones."""
        prof = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup and self.prof is None:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self.prof is not None and state.global_step == warmup + profile:
                self.prof.__exit__(None, None, None)
                print_profile(self.prof, profile)

    trainer.add_callback(Clock())
    if profile:
        trainer.add_callback(Profile())
    trainer.train()
    s = shapes(sm.model.config)
    pairs = [(len(f["prompt_ids"]), len(f["chosen_ids"]), len(f["rejected_ids"])) for f in feats]
    top = student_cfg.lora_layers or s["layers"]
    per_pair = training_step_flops(s, pairs, top=top, r=student_cfg.lora_r, nll_on_prompt=cfg.nll_on_prompt)
    per_step = {k: v / len(pairs) * cfg.batch_size for k, v in per_pair.items()}
    depth = s["layers"] - top
    cache = {"linear": 0.0, "attention": 0.0}
    for p, c, rj in pairs:  # one case, one pair: no prompt is shared on hpo-sim
        f = layer_flops(s, p + c + rj, causal_context(p) + causal_context(c, p) + causal_context(rj, p))
        cache = {k: cache[k] + depth * f[k] for k in cache}
    step_s = statistics.median(times[warmup:])
    bf16 = use_bf16(cfg.bf16)
    return {"dtype": "bf16" if bf16 else "fp32", "compiled": compile_layers,
            "attention": sm.model.config._attn_implementation, "first_step_s": times[0],
            "steps_timed": len(times[warmup:]), "seconds_per_step": step_s,
            "gflop_per_step": sum(per_step.values()) / 1e9,
            "gflop_per_step_parts": {k: round(v / 1e9, 1) for k, v in per_step.items()},
            "cache_build_s": build_s, "cache_gflop": sum(cache.values()) / 1e9,
            "pairs": len(pairs), "epoch_steps": -(-len(pairs) // cfg.batch_size)}, (per_step, cache)


def measure_generation(run_dir: Path, cases: int, batch_size: int) -> dict:
    from mint_core.predict import open_run

    run = open_run(run_dir)
    data, task = run.load_data(), run.component("task")
    picked = data.split("test")[:cases]
    prompts = [task.prompt(case=c, n_answers=10) for c in picked]
    sm = run.component("student").load(ctx=run.ctx, adapter_dir=None)
    s = shapes(sm.model.config)
    results = {}
    for name, dtype in (("fp32", torch.float32), ("auto", sm.inference_dtype or torch.float32)):
        if name == "auto" and dtype == torch.float32:
            break
        sm.inference_dtype = dtype
        start = time.perf_counter()
        answers = sm.generate(prompts=prompts, max_new_tokens=160, batch_size=batch_size)
        seconds = time.perf_counter() - start
        flops = {"linear": 0.0, "attention": 0.0, "vocab": 0.0}
        tokens = 0
        for prompt, answer in zip(prompts, answers):
            p, a = len(sm.prompt_ids(prompt)), len(sm.completion_ids(answer, end=True))
            tokens += a
            f = layer_flops(s, p + a, causal_context(p + a))
            flops["linear"] += s["layers"] * f["linear"]
            flops["attention"] += s["layers"] * f["attention"]
            flops["vocab"] += 2 * s["h"] * s["vocab"] * a  # one projection per generated token
        results[name] = {"dtype": str(dtype).replace("torch.", ""), "seconds": seconds, "answer_tokens": tokens,
                         "tokens_per_s": tokens / seconds, "flops": flops, "answers": answers}
    ranking_prompts = prompts
    from mint_core.evaluation import ranking_candidates

    candidates = ranking_candidates(task, data.labels)
    start = time.perf_counter()
    sm.score(prompts=ranking_prompts, candidates=candidates, batch_size=batch_size)
    seconds = time.perf_counter() - start
    results["ranking"] = {"dtype": str(sm.inference_dtype or torch.float32).replace("torch.", ""),
                          "seconds": seconds, "prompts": len(ranking_prompts), "candidates": len(candidates),
                          "flops": ranking_flops(s, [len(sm.prompt_ids(p)) for p in ranking_prompts],
                                                 [sm.completion_ids(c, end=False) for c in candidates])}
    return results


def ranking_flops(s: dict[str, int], prompts: list[int], candidates: list[list[int]]) -> dict[str, float]:
    """The work of ranking mode as ``LlamaTextModel.score`` does it, per prompt (token counts ``prompts``):
    the prompt with the candidates' shared first tokens runs once, projecting the positions that predict a
    shared token or a candidate's first token; every candidate's remaining tokens attend to that context
    and to themselves, each projected to the vocabulary. (Until 2026-12-07 this counted every candidate's
    shared tokens once per candidate: 20 x 7 of the demo's ~200 packed tokens a prompt, so ranking's
    fraction read high.)"""
    from mint_llama.student import common_prefix

    shared = len(common_prefix(candidates))
    rest = [len(c) - shared - 1 for c in candidates if len(c) - shared > 1]
    flops = {"linear": 0.0, "attention": 0.0, "vocab": 0.0}
    for p in prompts:
        context = p + shared
        parts = [layer_flops(s, context, causal_context(context))]
        parts += [layer_flops(s, n, causal_context(n, context)) for n in rest]
        flops["linear"] += s["layers"] * sum(f["linear"] for f in parts)
        flops["attention"] += s["layers"] * sum(f["attention"] for f in parts)
        flops["vocab"] += 2 * s["h"] * s["vocab"] * (shared + 1 + sum(rest))
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", help="a run directory holding the demo's preferences.jsonl and config.yaml")
    parser.add_argument("--steps", type=int, default=16, help="timed ORPO steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cases", type=int, default=60, help="test cases to generate for and rank")
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch (the demo's eval.batch_size)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N training steps (torch.profiler; table on stderr; times then include its overhead)")
    parser.add_argument("--training-only", action="store_true", help="skip generation and ranking")
    parser.add_argument("--compile", action="store_true",
                        help="train with optimizer.compile=true (the first step, compiling, is in first_step_s)")
    parser.add_argument("--attention", default="auto",
                        help="optimizer.attention while training (auto: MINT's segment kernel on CPU; eager to compare)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    from mint_core.hardware import native_bf16

    dtypes = {"fp32": torch.float32} | ({"bf16": torch.bfloat16} if native_bf16(device) else {})
    run_dir = demo_run_dir(args.run_dir)
    train, (step_flops, cache_flops) = measure_training(run_dir, args.steps, args.warmup, args.profile, args.compile,
                                                       args.attention)
    gen = {} if args.training_only else measure_generation(run_dir, args.cases, args.batch_size)

    h, i, vocab = 576, 1536, 49152  # SmolLM2-135M: the shapes the workloads run
    shapes_run = {"train": {"layer": (1024, h, i), "vocab": (1024, h, vocab)},
                  "decode": {"layer": (args.batch_size, h, i), "vocab": (args.batch_size, h, vocab)}}
    readings = {name: {kind: {part: matmul_rate(*mkn, dt, device) for part, mkn in parts.items()}
                       for kind, parts in shapes_run.items()} for name, dt in dtypes.items()}
    rates = {name: {kind: {part: best for part, (best, _) in parts.items()} for kind, parts in by.items()}
             for name, by in readings.items()}

    def fraction(flops: dict, seconds: float, dtype: str, kind: str) -> dict:
        achieved = sum(flops.values()) / seconds / 1e9
        reference = reference_rate(rates[dtype][kind], flops)
        return {"achieved_gflops": round(achieved, 1), "matmul_gflops": round(reference, 1),
                "gemm_fraction": round(achieved / reference, 3)}

    short = {"bfloat16": "bf16", "float32": "fp32"}
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_flags": cpu_flags(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device},
        "matmul_gflops": {d: {k: {s: round(v, 1) for s, v in r.items()} for k, r in by.items()} for d, by in rates.items()},
        "matmul_gflops_worst_window": {d: {k: {s: round(w, 1) for s, (_, w) in r.items()} for k, r in by.items()}
                                       for d, by in readings.items()},
        "training": {**{k: (round(v, 3) if isinstance(v, float) else v) for k, v in train.items()},
                     **fraction(step_flops, train["seconds_per_step"], train["dtype"], "train")},
        "cache_build": {"seconds": round(train["cache_build_s"], 1),
                        **fraction(cache_flops, train["cache_build_s"], train["dtype"], "train")},
    }
    fp32 = gen.get("fp32")
    for name in ("fp32", "auto"):
        if name not in gen:
            continue
        g = gen[name]
        report[f"generation_{name}"] = {
            "dtype": g["dtype"], "seconds": round(g["seconds"], 1), "answer_tokens": g["answer_tokens"],
            "tokens_per_s": round(g["tokens_per_s"], 1),
            "identical_to_fp32": sum(a == b for a, b in zip(g["answers"], fp32["answers"])),
            "cases": len(g["answers"]), **fraction(g["flops"], g["seconds"], short[g["dtype"]], "decode")}
    if gen:
        rk = gen["ranking"]
        report["ranking"] = {"dtype": rk["dtype"], "seconds": round(rk["seconds"], 1), "prompts": rk["prompts"],
                             **fraction(rk["flops"], rk["seconds"], short[rk["dtype"]], "train")}
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
