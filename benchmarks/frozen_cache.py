"""The frozen-bottom cache: how much an epoch after the first costs relative to the first.

One process, one student, demo-shaped pairs (prompt ~104 tokens, answers ~125-140, as the demo's
hpo-sim preferences), MINT's ORPO trainer (``compute_loss`` + ``backward`` + AdamW step through the
trainer object, as :mod:`orpo_step`). Sides, each on a fresh student with the same LoRA start:

- ``full``: LoRA on every layer, no cache (the previous default): one epoch;
- ``top``: LoRA on the top ``--lora-layers`` layers, no cache: one epoch;
- ``cached``: the same placement with ``cache_frozen``: epoch 1 = building the cache + one epoch,
  then epoch 2 (the same pairs, the cache reused).

``ratio`` = epoch 2 / epoch 1 of the cached side (the target is <= 0.35); ``ratio_vs_full`` =
cached epoch 2 / the full-LoRA epoch. Wall and CPU (process) seconds are both reported; the
machine may be shared, so the 1-minute load average is recorded too.

    python benchmarks/frozen_cache.py --json
    python benchmarks/frozen_cache.py --model /path/tiny --pairs 8 --json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from orpo_step import make_examples, report  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="student.model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--pairs", type=int, default=16, help="training pairs (one epoch)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lora-layers", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=104)
    parser.add_argument("--answer-tokens", default="125-140")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    import torch
    from rich.console import Console

    from mint_core.context import RunContext
    from mint_llama import LlamaTextConfig
    from mint_llama.student import LlamaTextStudent
    from mint_orpo import OrpoConfig
    from mint_engine.options import training_arguments_kwargs
    from mint_engine.encoding import encode_pairs
    from mint_engine.optimizer import build_mint_trainer
    from mint_engine.orpo import OrpoTrainer

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="frozen-cache-bench-"))
    ctx = RunContext(run_dir=tmp, seed=args.seed, console=Console(stderr=True, quiet=True))
    answer_tokens = tuple(int(x) for x in args.answer_tokens.split("-"))
    model_kw = {"model": args.model} if args.model else {}

    def side(lora_layers: int, cache: str):
        student = LlamaTextStudent(LlamaTextConfig(**model_kw, lora_layers=lora_layers, device="cpu"))
        sm = student.load(ctx=ctx, trainable=True)
        examples = make_examples(sm, args.pairs, prompt_tokens=args.prompt_tokens, answer_tokens=answer_tokens,
                                 seed=args.seed)
        features = encode_pairs(sm, examples, max_length=1024, max_prompt_length=768)
        cfg = OrpoConfig(batch_size=args.batch_size, learning_rate=1e-3, nll_on_prompt=False, cache_frozen=cache)
        kwargs = training_arguments_kwargs(cfg, output_dir=tmp / f"{lora_layers}-{cache}", seed=args.seed)
        began, cpu_began = time.perf_counter(), time.process_time()
        trainer = build_mint_trainer(cfg, sm, features, args_kwargs=kwargs, callbacks=[], trainer_cls=OrpoTrainer, ctx=ctx)
        setup = (time.perf_counter() - began, time.process_time() - cpu_began)  # includes building the cache
        trainer.create_optimizer_and_scheduler(num_training_steps=100)
        return trainer, setup, sm

    def epoch(trainer) -> tuple[float, float, float]:
        model, data = trainer.model, trainer.train_dataset
        model.train()
        began, cpu_began, losses = time.perf_counter(), time.process_time(), []
        for start in range(0, len(data), args.batch_size):
            inputs = trainer._prepare_inputs(trainer.data_collator(data[start:start + args.batch_size]))
            loss = trainer.compute_loss(model, inputs)
            loss.backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        return time.perf_counter() - began, time.process_time() - cpu_began, sum(losses) / len(losses)

    loads = [os.getloadavg()[0]]
    full, _, sm_full = side(0, "false")
    full_epoch = epoch(full)
    layers = int(sm_full.model.get_base_model().config.num_hidden_layers)
    del full, sm_full
    top, _, _ = side(args.lora_layers, "false")
    top_epoch = epoch(top)
    del top
    cached, (build_s, build_cpu), _ = side(args.lora_layers, "true")
    first = epoch(cached)
    second = epoch(cached)
    loads.append(os.getloadavg()[0])
    cache = cached.frozen_cache
    tokens = sum(s.shape[0] for s in cache.states.values())
    epoch1, epoch1_cpu = build_s + first[0], build_cpu + first[1]
    result = {
        "benchmark": "frozen_cache", "model": args.model or "SmolLM2-135M-Instruct", "layers": layers,
        "lora_layers": args.lora_layers, "cached_layers": cache.depth, "pairs": args.pairs,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(), "tokens": tokens,
        "cache_mib": round(cache.nbytes / 2**20, 2), "cache_bytes_per_token": cache.nbytes // max(tokens, 1),
        "full_lora_epoch_s": round(full_epoch[0], 2), "top_lora_epoch_s": round(top_epoch[0], 2),
        "cache_build_s": round(build_s, 2), "cached_epoch1_s": round(epoch1, 2), "cached_epoch2_s": round(second[0], 2),
        "full_lora_epoch_cpu_s": round(full_epoch[1], 2), "top_lora_epoch_cpu_s": round(top_epoch[1], 2),
        "cached_epoch1_cpu_s": round(epoch1_cpu, 2), "cached_epoch2_cpu_s": round(second[1], 2),
        "ratio": round(second[0] / epoch1, 3), "cpu_ratio": round(second[1] / epoch1_cpu, 3),
        "ratio_vs_full": round(second[0] / full_epoch[0], 3), "cpu_ratio_vs_full": round(second[1] / full_epoch[1], 3),
        "load_avg_1min": [round(x, 2) for x in loads],
        "mean_loss": {"full": round(full_epoch[2], 4), "top": round(top_epoch[2], 4),
                      "cached_epoch1": round(first[2], 4), "cached_epoch2": round(second[2], 4)},
    }
    return report(result, as_json=args.json)


if __name__ == "__main__":
    main()
