"""How much tissue information the offline vision student's image features carry before training.

A linear probe (multinomial logistic regression, L2 0.01, on standardised features, fitted on the
training tiles, scored on the test tiles) over three feature sets of the same tiles:

- ``pixels``: each channel's mean and standard deviation (6 numbers; what a pathologist's low-power
  impression of stain and density is made of);
- ``vision``: the student's vision tower output, mean-pooled over patches;
- ``projector``: the multimodal projector's output (what the cross-attention layer reads), mean-pooled.

If ``pixels`` scores far above ``vision``, the random tower loses the signal that separates the
classes, and a student trained for an epoch cannot recover it through a language-model loss.

    python benchmarks/vision_features.py --run-dir RUN --json      # RUN: a tissue run after `mint teach`
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from orpo_step import report  # noqa: E402


def probe_accuracy(train_x, train_y, test_x, test_y, *, n_classes: int, l2: float = 0.01) -> float:
    """Test accuracy of a logistic regression fitted with L-BFGS on standardised ``train_x``."""
    import torch

    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    layer = torch.nn.Linear(a.shape[1], n_classes)
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(a), train_y) + l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((layer(b).argmax(1) == test_y).float().mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a tissue run directory (cases.jsonl, images/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    import torch
    import yaml
    from PIL import Image

    from mint_core import io
    from mint_core.context import RunContext
    from mint_core.types import Case
    from mint_llama_vision import LlamaVisionConfig
    from mint_llama_vision.student import LlamaVisionStudent

    run = args.run_dir
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    section = {k: v for k, v in config["student"].items() if k != "name"}
    student = LlamaVisionStudent(LlamaVisionConfig(**{**section, "device": "cpu"}))
    sm = student.load(ctx=RunContext(run_dir=run))
    model = sm.model.get_base_model() if hasattr(sm.model, "get_base_model") else sm.model
    image_processor = sm.processor.image_processor
    cases = [Case.from_dict(row) for row in io.read_jsonl(run / "cases.jsonl")]
    labels = sorted({case.label_id for case in cases})

    def features(split: str):
        chosen = [c for c in cases if c.split == split]
        images = [[Image.open(run / c.image).convert("RGB")] for c in chosen]
        inputs = image_processor(images=images, return_tensors="pt")
        with torch.no_grad():
            vision = model.model.vision_model(pixel_values=inputs["pixel_values"],
                                              aspect_ratio_ids=inputs["aspect_ratio_ids"],
                                              aspect_ratio_mask=inputs["aspect_ratio_mask"])[0]
            projected = model.model.multi_modal_projector(vision)
        pixels = inputs["pixel_values"].reshape(len(chosen), 3, -1)
        y = torch.tensor([labels.index(c.label_id) for c in chosen])
        return {"pixels": torch.cat([pixels.mean(2), pixels.std(2)], 1),
                "vision": vision.reshape(len(chosen), -1, vision.shape[-1]).mean(1),
                "projector": projected.reshape(len(chosen), -1, projected.shape[-1]).mean(1)}, y

    train, train_y = features("train")
    test, test_y = features("test")
    result = {"benchmark": "vision_features", "run_dir": str(run), "classes": len(labels),
              "train_tiles": len(train_y), "test_tiles": len(test_y), "chance": round(1 / len(labels), 3)}
    for name in ("pixels", "vision", "projector"):
        result[f"{name}_probe_accuracy"] = round(probe_accuracy(train[name], train_y, test[name], test_y,
                                                                n_classes=len(labels)), 3)
    teacher = io.read_json(run / "metrics.json").get("teacher", {}) if (run / "metrics.json").exists() else {}
    if "top1" in teacher:
        result["teacher_top1"] = round(float(teacher["top1"]), 3)
    return report(result, as_json=args.json)


if __name__ == "__main__":
    main()
