"""Trains every packed objective (and TRL's DPO) on a taught run directory, under ``torchrun`` or alone.

    python tests/multiprocess_driver.py RUN_DIR OUT BATCH                        # one process, batch BATCH
    torchrun --nproc_per_node 2 tests/multiprocess_driver.py RUN_DIR OUT BATCH   # two processes

Each method trains into ``OUT/<method>`` through the optimizer components the registry builds (the
same objects ``mint train`` uses), fp32, data in file order (``optimizer.shuffle=false``), LoRA on the
top layer only so the frozen-bottom cache runs. ``tests/test_multiprocess.py`` compares the outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

METHODS = {  # name -> (optimizer, builder, extra options)
    "orpo": ("orpo", "topk", {}),
    "dpo": ("dpo", "topk", {}),
    "kto": ("kto", "kto", {}),
    "sft": ("sft", "sft", {}),
    "dpo-trl": ("dpo", "topk", {"impl": "trl"}),
}


def main(run_dir: Path, out: Path, batch_size: int) -> None:
    from mint_core import distributed
    from mint_core.config import build_config, load_config_file
    from mint_core.pipeline import Run
    from mint_core.registry import get_registry
    from mint_core.rundir import seed_everything
    from mint_core.types import PreferenceExample
    from mint_core import io

    distributed.setup()
    run = Run(registry=get_registry(), config=load_config_file(run_dir / "config.yaml"), run_dir=run_dir)
    run.load_data()
    for label, (name, builder, extra) in METHODS.items():
        spec = run.registry.get("optimizer", name)
        # adam_epsilon=1e-3: with the default 1e-8 Adam turns a near-zero gradient's summation noise
        # (one process adds the batch in one order, two in another) into a full learning-rate step of
        # either sign, 4e-4 apart after 4 steps; a larger epsilon keeps the step proportional to the
        # gradient, so the comparison tests the gradients (measured gap 6e-7; the adapters still move ~1e-2).
        options = dict(max_steps=4, batch_size=batch_size, save_steps=100, learning_rate=5e-3, seed=0, bf16="false",
                       shuffle=False, training_args="adam_epsilon=1e-3", **extra)
        optimizer = spec.create(build_config(spec.config, options, section="optimizer", component=name))
        examples = io.read_jsonl(run.preferences_path(builder), parse=PreferenceExample.from_dict)
        seed_everything(0)
        optimizer.train(student=run.component("student"), examples=examples, output_dir=out / label, ctx=run.ctx)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
    from mint_core import distributed

    if distributed.active():  # as the mint CLI ends under a launcher (distributed.exit_process)
        distributed.exit_process(0)
