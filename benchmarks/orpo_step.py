"""Time ORPO optimizer steps: MINT's packed trainer (``impl=mint``) against TRL's ORPOTrainer (``impl=trl``).

Both run in ONE process on identical inputs: the same MINT-shaped pairs (prompt ~400 tokens,
answers 60-80 tokens, from the student's own chat template), the same batch size, the same LoRA
initialisation (same seed) and AdamW, each on its own copy of the student. Steps alternate
(MINT first on even steps, TRL first on odd ones) so machine load hits both sides alike.

A step is ``compute_loss`` + ``backward`` + ``optimizer.step`` through each trainer object (the
Trainer's own loss path; collation is done before the clock starts, for both). The reported
``ratio`` is median MINT step time / median TRL step time after ``--warmup`` untimed steps.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the step minus the allocation at
its start. On CPU there are no allocator statistics, so each side is measured apart, in a child
process of its own that loads only that side and runs ``--warmup`` + 2 steps, with glibc told to
give every block above 64 KiB back to the system when it is freed (``MALLOC_MMAP_THRESHOLD_``):
the process RSS then follows the live tensors, and a thread samples it every 2 ms during the
step. The figure is the peak minus the RSS at the step's start (the activations, logits and
gradients the step allocates on top of the weights), median over the measured steps. Without the
fixed threshold glibc keeps freed blocks below 32 MiB for reuse, which hides most of a
well-behaved step's allocations (the timed run shares one process and is not used for memory).

    python benchmarks/orpo_step.py --json                    # default llama-text student (SmolLM2-135M)
    python benchmarks/orpo_step.py --model /path/tiny --steps 4 --json
    python benchmarks/orpo_step.py --padding-free --json     # MINT side with optimizer.padding_free=true

The last line printed with ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PHRASES = [
    "global developmental delay", "hypotonia", "seizures", "short stature", "microcephaly", "cleft palate",
    "sensorineural hearing loss", "scoliosis", "ventricular septal defect", "intellectual disability",
    "arachnodactyly", "lens dislocation", "aortic root dilatation", "joint hypermobility", "ptosis",
    "downslanting palpebral fissures", "low-set ears", "feeding difficulties", "hypertelorism",
    "brachydactyly", "failure to thrive", "recurrent infections", "hepatomegaly", "cryptorchidism",
]
DISEASES = [
    "Marfan syndrome", "Loeys-Dietz syndrome", "Ehlers-Danlos syndrome, classic type", "Noonan syndrome 1",
    "Williams-Beuren syndrome", "Cornelia de Lange syndrome 1", "Kabuki syndrome 1", "Angelman syndrome",
    "Prader-Willi syndrome", "Smith-Magenis syndrome", "CHARGE syndrome", "Rett syndrome",
    "Sotos syndrome 1", "Costello syndrome", "Rubinstein-Taybi syndrome 1", "Coffin-Siris syndrome 1",
    "Bardet-Biedl syndrome 1", "Joubert syndrome 1", "Wolf-Hirschhorn syndrome", "Cri-du-chat syndrome",
]


def _token_len(sm, text: str) -> int:
    return len(sm.completion_ids(text, end=False)) if hasattr(sm, "completion_ids") else len(
        sm.encode(prompt=_prompt(text))["input_ids"])


def _prompt(text: str):
    from mint_core.types import Prompt

    return Prompt(text=text)


def make_examples(sm, n: int, *, prompt_tokens: int, answer_tokens: tuple[int, int], seed: int, spread: int = 0):
    """MINT-shaped pairs: clinical-notes prompts of ~``prompt_tokens`` (+-``spread``) tokens, top-k / bottom-q
    answer lists."""
    from mint_core.answers import format_answer
    from mint_core.types import PreferenceExample

    rng = random.Random(seed)
    examples = []
    for i in range(n):
        notes = f"Case {i}. The patient is a {rng.randint(1, 60)}-year-old with"
        target_tokens = prompt_tokens + (rng.randint(-spread, spread) if spread else 0)
        while len(sm.encode(prompt=_prompt(notes))["input_ids"]) < target_tokens:
            notes += " " + rng.choice(PHRASES) + ("," if rng.random() < 0.7 else ".")
        question = notes + " Which diseases best explain these findings? List the most likely, best first."
        answers = []
        for _ in range(2):
            target = rng.randint(*answer_tokens)
            names = rng.sample(DISEASES, len(DISEASES))
            k = 1
            while k < len(names) and _token_len(sm, format_answer(names[:k + 1], noun="diseases")) <= target:
                k += 1
            answers.append(format_answer(names[:k], noun="diseases"))
        examples.append(PreferenceExample(case_id=f"b{i}", prompt=_prompt(question), chosen=answers[0],
                                          rejected=answers[1]))
    return examples


class PeakMemory:
    """Peak memory increase over a block: CUDA allocator stats, else sampled process RSS."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.peak = 0

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        import psutil

        self.proc = psutil.Process()
        self.start = self.proc.memory_info().rss
        self.max_rss = self.start
        self.stop = threading.Event()

        def sample():
            while not self.stop.is_set():
                self.max_rss = max(self.max_rss, self.proc.memory_info().rss)
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.stop.set()
            self.thread.join()
            self.max_rss = max(self.max_rss, self.proc.memory_info().rss)
            self.peak = self.max_rss - self.start
        return False


def add_pair_arguments(parser: argparse.ArgumentParser, *, steps: int) -> None:
    """The options every step benchmark shares: student, MINT-shaped pairs, timing, output."""
    parser.add_argument("--model", default=None, help="student.model (default: the llama-text default, SmolLM2)")
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side first")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=400)
    parser.add_argument("--answer-tokens", default="60-80")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-r", type=int, default=None, help="student.lora_r (default: the student's)")
    parser.add_argument("--lora-alpha", type=int, default=None, help="student.lora_alpha")
    parser.add_argument("--dtype", default="auto", help="student.dtype (weights): auto, float32, bfloat16")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def student_config(args: argparse.Namespace):
    """The llama-text student config the step benchmarks' options describe."""
    from mint_llama import LlamaTextConfig

    options = {"model": args.model, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha}
    return LlamaTextConfig(dtype=args.dtype, **{k: v for k, v in options.items() if v is not None})


def report(result: dict, *, as_json: bool) -> dict:
    """Print a benchmark's result: one JSON line (``--json``), else one aligned ``key: value`` per line."""
    if as_json:
        print(json.dumps(result))
    else:
        width = max(len(key) for key in result)
        for key, value in result.items():
            print(f"{key:>{width}}: {value}")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pair_arguments(parser, steps=6)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for both sides")
    parser.add_argument("--answer-only-nll", action="store_true",
                        help="MINT side with nll_on_prompt=false (not loss-comparable with TRL)")
    parser.add_argument("--padding-free", action="store_true",
                        help="MINT side with padding_free=true (the batch's pairs in one row, dense 4D mask); "
                             "default: auto, MINT's default")
    parser.add_argument("--prompt-spread", type=int, default=0,
                        help="vary prompt lengths by up to +-N tokens (padding matters only when lengths vary)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-side memory probes (CPU)")
    parser.add_argument("--only", choices=["mint", "trl"], help=argparse.SUPPRESS)  # memory probe child
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from rich.console import Console

    from mint_core.context import RunContext
    from mint_llama.student import LlamaTextStudent

    cuda = torch.cuda.is_available()
    tmp = Path(tempfile.mkdtemp(prefix="orpo-bench-"))
    ctx = RunContext(run_dir=tmp, seed=args.seed, console=Console(stderr=True, quiet=not sys.stderr.isatty()))
    student_cfg = student_config(args)
    student = LlamaTextStudent(student_cfg)
    impls = (args.only,) if args.only else ("mint", "trl")
    sides = {impl: build_side(impl, student, ctx, args, tmp) for impl in impls}
    features = next(iter(sides.values()))["features"]
    n_steps = args.steps + args.warmup if not args.only else args.warmup + 2

    def step(side: dict, feats: list) -> tuple[float, float, int]:
        trainer, model = side["trainer"], side["model"]
        inputs = trainer._prepare_inputs(side["collate"](feats))
        model.train()
        autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=args.bf16)
        # On CPU only the memory probe children sample RSS: the sampling thread would slow the timed steps.
        mem = PeakMemory(cuda)
        with mem if cuda or args.only else contextlib.nullcontext():
            start, cpu_start = time.perf_counter(), time.process_time()
            with autocast:
                loss = trainer.compute_loss(model, inputs)
            loss.backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        side["cpu"].append(cpu)
        return elapsed, float(loss.detach()), mem.peak

    for i in range(n_steps):
        feats = features[i * args.batch_size:(i + 1) * args.batch_size]
        order = impls if i % 2 == 0 else impls[::-1]
        for impl in order:
            elapsed, loss, peak = step(sides[impl], feats)
            if i >= args.warmup:
                sides[impl]["times"].append(elapsed)
                sides[impl]["mem"].append(peak)
            sides[impl]["losses"].append(loss)
        print(f"step {i}: " + " ".join(f"{impl} {sides[impl]['times'][-1:] or '-'} loss {sides[impl]['losses'][-1]:.6f}"
                                       for impl in impls), file=sys.stderr)
    if args.only:  # memory probe child: report this side's per-step peak and stop
        print(json.dumps({"peak_mem_mb": round(statistics.median(sides[args.only]["mem"]) / 2**20, 1)}))
        return {}

    memory = {impl: statistics.median(sides[impl]["mem"]) / 2**20 for impl in impls}
    memory_measure = "cuda max_memory_allocated delta"
    if not cuda:
        memory_measure = "sampled RSS peak delta per step, one child process per side (MALLOC_MMAP_THRESHOLD_=65536)"
        memory = {impl: None if args.no_memory else memory_probe(impl, argv) for impl in impls}
    mint_t, trl_t = statistics.median(sides["mint"]["times"]), statistics.median(sides["trl"]["times"])
    diffs = [abs(a - b) for a, b in zip(sides["mint"]["losses"], sides["trl"]["losses"])]
    p_lens = [len(f["prompt_ids"]) for f in features]
    a_len = statistics.mean(len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features) / 2
    result = {
        "benchmark": "orpo_step",
        "model": str(student.resolve(ctx).path) if args.model else student_cfg.model,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "bf16": args.bf16,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "batch_size": args.batch_size, "steps": args.steps, "mean_prompt_tokens": round(statistics.mean(p_lens), 1),
        "prompt_tokens_range": [min(p_lens), max(p_lens)], "mean_answer_tokens": round(a_len, 1),
        "mint_nll_on_prompt": not args.answer_only_nll, "mint_padding_free": "true" if args.padding_free else "auto",
        "mint_step_s": round(mint_t, 4), "trl_step_s": round(trl_t, 4), "ratio": round(mint_t / trl_t, 4),
        # CPU seconds of the whole process during the step: less sensitive to a shared machine's load.
        "cpu_ratio": round(statistics.median(sides["mint"]["cpu"][args.warmup:])
                           / statistics.median(sides["trl"]["cpu"][args.warmup:]), 4),
        "mint_step_times": [round(t, 4) for t in sides["mint"]["times"]],
        "trl_step_times": [round(t, 4) for t in sides["trl"]["times"]],
        "first_step_loss_diff": diffs[0], "max_abs_loss_diff": max(diffs),
        "mint_peak_mem_mb": _round(memory["mint"]), "trl_peak_mem_mb": _round(memory["trl"]),
        "memory_measure": memory_measure,
    }
    return report(result, as_json=args.json)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def build_side(impl: str, student, ctx, args, tmp: Path) -> dict:
    """One side of the comparison: its own copy of the student, its trainer and optimizer, its collator."""
    from trl.experimental.utils import DPODataCollatorWithPadding

    from mint_orpo import OrpoConfig
    from mint_engine.options import training_arguments_kwargs
    from mint_engine.encoding import encode_pairs
    from mint_engine.optimizer import build_mint_trainer
    from mint_engine.orpo import OrpoTrainer
    from mint_engine.trl_orpo import build_trl_trainer, to_trl_row

    sm = student.load(ctx=ctx, trainable=True)  # same ctx.seed: identical LoRA start on both sides
    lo, hi = (int(x) for x in args.answer_tokens.split("-"))
    cfg = OrpoConfig(impl=impl, batch_size=args.batch_size, learning_rate=args.lr, lr_scheduler="constant",
                     bf16="true" if args.bf16 else "false", max_steps=args.steps + args.warmup,
                     nll_on_prompt=not (impl == "mint" and args.answer_only_nll),
                     # MINT's default (auto: padded rows for these batches under sdpa, see padding_free.py)
                     padding_free="true" if args.padding_free else "auto", seed=args.seed)
    # Same seed and student on both sides: identical pairs and token ids (the memory probe runs 2 steps).
    examples = make_examples(sm, args.batch_size * (max(args.steps, 2) + args.warmup), prompt_tokens=args.prompt_tokens,
                             answer_tokens=(lo, hi), seed=args.seed, spread=args.prompt_spread)
    features = encode_pairs(sm, examples, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
    kwargs = training_arguments_kwargs(cfg, output_dir=tmp / impl, seed=args.seed)
    if impl == "mint":
        trainer = build_mint_trainer(cfg, sm, features, args_kwargs=kwargs, callbacks=[], trainer_cls=OrpoTrainer, ctx=None)
        collate = trainer.data_collator
    else:
        trainer = build_trl_trainer(cfg, sm, features, args_kwargs=kwargs)
        trl_collate = DPODataCollatorWithPadding(pad_token_id=sm.pad_token_id)
        collate = lambda feats, _c=trl_collate: _c([to_trl_row(f) for f in feats])  # noqa: E731
    trainer.create_optimizer()
    return {"trainer": trainer, "model": sm.model, "collate": collate, "features": features, "times": [],
            "losses": [], "mem": [], "cpu": []}


def memory_probe(impl: str, argv: list[str] | None) -> float | None:
    """Per-step peak memory of one side, measured in a child process (see the module docstring)."""
    import subprocess

    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--json"]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run([sys.executable, __file__, *args, "--only", impl], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"memory probe ({impl}) failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mem_mb"]


if __name__ == "__main__":
    main()
