"""How well can a CNN read the rendered faces? A geometry reader pretrained on rendered faces of random findings.

The gestalt teacher's face CNN learns the diseases from 160 training faces (8 per disease) and reads
little (face-only top-1 0.08-0.45 on hpo-sim). ``face_ceiling.py`` shows what a *perfect* reader of
the face's geometry adds when it knows how each finding looks (+4.4 points over the notes). This
probe measures a real one, the route a future face branch would take:

1. **Pretraining corpus**: ``--samples`` faces drawn by the task's renderer from random sets of 0-7
   findings out of the label space's annotated facial terms and their facial parents (no case, no
   disease label); targets are each face's geometry (the renderer's parameters, as landmark
   annotations of a face corpus would be).
2. **Reader**: timm ``test_resnet`` regressing the geometry at the teacher's 64 px (AdamW, one-cycle),
   validation R² on a held-out tenth of the corpus.
3. **Appearance of each finding**: ridge regression from the corpus faces' findings to the reader's
   reads; the residual covariance is the reading noise.
4. **Scoring the run's faces**: a disease showing k of its n annotated facial findings gives a
   Gaussian over the reads (mean ``(k/n) sum W_t``, covariance ``(k/n)(1 - k/n) sum W_t W_t^T`` +
   reading noise); k is fitted on the train + val faces. Face-only top-1 on test, and the teacher's
   log-probabilities (``rankings.jsonl``) plus ``w`` times these, for each ``--weights`` value, on val
   and test; ``chosen_weight`` is the best on val (ties: the smallest, 0 = the teacher alone).

    python benchmarks/face_reader.py RUN --json     # RUN: a rare-disease run after `mint teach`
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from face_ceiling import disease_log_probs, face_geometry, mean_log_prob_of_truth  # noqa: E402
from orpo_step import report  # noqa: E402

IMAGE_SIZE = 64  # the gestalt teacher's default image_size


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a rare-disease run directory where `mint teach` has run")
    parser.add_argument("--samples", type=int, default=6000, help="rendered faces in the pretraining corpus")
    parser.add_argument("--epochs", type=int, default=15, help="reader training epochs over the corpus")
    parser.add_argument("--weights", default="0.05,0.1,0.25,0.5,1", help="fusion weights to report")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from rich.console import Console

    from mint_core.metrics import wilson_intervals as with_intervals
    from mint_core.predict import open_run
    from mint_rare_disease import hpo

    run = open_run(args.run_dir, console=Console(stderr=True, quiet=True))
    data, rankings = run.load_data(), run.load_rankings()
    ids = data.labels.ids
    facial = {d: [t for t in hpo.disease_terms(d) if hpo.is_facial(t)] for d in ids}
    vocabulary = sorted({t for terms in facial.values() for t in terms}
                        | {p for terms in facial.values() for t in terms for p in hpo.parents(t)
                           if hpo.is_facial(p) and not hpo.is_too_generic(p)})
    result: dict = {"benchmark": "face_reader", "run": args.run_dir.name, "samples": args.samples,
                    "epochs": args.epochs, "vocabulary": len(vocabulary)}

    started = time.perf_counter()
    images, geometry, findings = render_corpus(vocabulary, args.samples, seed=args.seed)
    result["render_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    reader, r2 = train_reader(images, geometry, epochs=args.epochs, seed=args.seed)
    result.update(train_s=round(time.perf_counter() - started, 1), val_r2_mean=round(float(r2.mean()), 3),
                  val_r2_min=round(float(r2.min()), 3))
    reads = reader(images)
    effects, bias, noise = finding_effects(findings, reads)
    # A disease without facial annotations predicts the average face (no finding's effect).
    position = {t: i for i, t in enumerate(vocabulary)}
    disease_effects = [effects[[position[t] for t in facial[d]]] if facial[d] else torch.zeros_like(effects[:1])
                       for d in ids]

    from mint_gestalt.images import load_images

    splits = {name: data.split(name) for name in ("train", "val", "test")}
    read = {name: reader(load_images([run.ctx.resolve(case.image) for case in cases], IMAGE_SIZE)[0])
            for name, cases in splits.items()}
    truth = {name: torch.tensor([ids.index(case.label_id) for case in cases]) for name, cases in splits.items()}
    fit_x, fit_y = torch.cat([read["train"], read["val"]]), torch.cat([truth["train"], truth["val"]])
    k = max(range(1, 8), key=lambda k: mean_log_prob_of_truth(
        disease_log_probs(fit_x, disease_effects, bias, noise, k), fit_y))
    face = {name: disease_log_probs(x, disease_effects, bias, noise, k) for name, x in read.items()}
    result["k"] = k
    result["train_mean_log_prob_of_truth"] = round(mean_log_prob_of_truth(face["train"], truth["train"]), 2)
    teacher = {name: torch.tensor([teacher_probs(rankings[c.id], ids) for c in cases]).log()
               for name, cases in splits.items()}

    def top1(scores: torch.Tensor, name: str) -> dict:
        return with_intervals({"top1": round(float((scores.argmax(-1) == truth[name]).float().mean()), 3),
                               "n": len(truth[name])})

    result["face_only_test"] = top1(face["test"], "test")
    result["teacher_val"], result["teacher_test"] = top1(teacher["val"], "val"), top1(teacher["test"], "test")
    best = (result["teacher_val"]["top1"], 0.0)
    for w in [float(x) for x in args.weights.split(",")]:
        val, test = top1(teacher["val"] + w * face["val"], "val"), top1(teacher["test"] + w * face["test"], "test")
        result[f"fused_w{w:g}"] = {"val_top1": val["top1"], "test": test}
        if val["top1"] > best[0]:
            best = (val["top1"], w)
    result["chosen_weight"] = best[1]
    result["chosen_test"] = top1(teacher["test"] + best[1] * face["test"], "test")
    return report(result, as_json=args.json)


def teacher_probs(ranking, ids: list[str]) -> list[float]:
    """The teacher's probability of each label in ``ids`` order (floored, so its log is finite)."""
    scores = dict(zip(ranking.label_ids, ranking.scores))
    return [max(scores.get(label_id, 0.0), 1e-12) for label_id in ids]


def render_corpus(vocabulary: list[str], n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` faces of 0-7 random findings: uint8 images, their geometry, their findings (multi-hot)."""
    from mint_gestalt.images import image_tensor
    from mint_rare_disease.faces import PARAM_NAMES, render_face

    rng = random.Random(f"face-reader:{seed}")
    position = {t: i for i, t in enumerate(vocabulary)}
    images = torch.zeros(n, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    geometry = torch.zeros(n, len(PARAM_NAMES))
    findings = torch.zeros(n, len(vocabulary))
    for i in range(n):
        terms, key = rng.sample(vocabulary, rng.randint(0, 7)), f"face-reader:{seed}:{i}"
        # Rendered at the task's 128 px and resized as the teacher loads every face.
        images[i] = image_tensor(render_face(terms, key=key, size=128), IMAGE_SIZE)
        geometry[i] = face_geometry(terms, key=key)
        findings[i, [position[t] for t in terms]] = 1.0
    return images, geometry, findings


def train_reader(images: torch.Tensor, geometry: torch.Tensor, *, epochs: int, seed: int, batch_size: int = 64):
    """A ``test_resnet`` regressing the geometry; returns ``(read(images) -> float64 reads, val R² per parameter)``."""
    import timm

    torch.manual_seed(seed)
    mean = images.float().mean((0, 2, 3)).view(1, 3, 1, 1) / 255
    std = images.float().std((0, 2, 3)).view(1, 3, 1, 1) / 255
    net = timm.create_model("test_resnet", pretrained=False, num_classes=geometry.shape[1])
    n_train = int(len(images) * 0.9)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=epochs * -(-n_train // batch_size))
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(n_train).split(batch_size):
            loss = torch.nn.functional.mse_loss(net((images[idx].float() / 255 - mean) / std), geometry[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()

    @torch.no_grad()
    def read(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net((x[i:i + 256].float() / 255 - mean) / std) for i in range(0, len(x), 256)]).double()

    held_out = read(images[n_train:])
    r2 = 1 - ((held_out - geometry[n_train:].double()) ** 2).mean(0) / geometry[n_train:].double().var(0)
    return read, r2


def finding_effects(findings: torch.Tensor, reads: torch.Tensor, ridge: float = 1.0):
    """Ridge regression reads ~ findings @ effects + bias; returns ``(effects, bias, residual covariance)``."""
    design = torch.cat([findings.double(), torch.ones(len(findings), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.solve(design.T @ design + ridge * torch.eye(design.shape[1], dtype=torch.float64),
                                  design.T @ reads)
    residual = reads - design @ solution
    return solution[:-1], solution[-1], torch.cov(residual.T)


if __name__ == "__main__":
    main()
