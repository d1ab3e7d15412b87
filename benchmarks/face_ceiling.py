"""How much can a face add to the notes? Naive Bayes on the HPO terms each view carries, read perfectly.

The rare-disease task writes the notes' terms (``notes_hpo_ids``) and, separately, the facial
findings that only the face shows (``facial_hpo_ids``) into each case's metadata. This benchmark
fits :class:`mint_hpo.scoring.NaiveBayes` (the ``hpo`` teacher's model, same ``alpha``) on the
train + val cases of a run directory and reports test top-1 (95% Wilson interval) from

- ``notes``: the notes' terms and negations (what the ``hpo`` baseline reads);
- ``face_terms``: the facial findings alone, as if the face were read without error;
- ``notes_and_face_terms``: both: the ceiling of a teacher whose face branch reads every finding.

The gap between ``notes`` and ``notes_and_face_terms`` bounds what a perfect face reader adds over
the ``hpo`` baseline; the gestalt teacher's face CNN reads far less (its face-only top-1 is in
``metrics.json``).

A face does not show its terms, only their summed effect on the drawing. Two more views bound a
reader that recovers the face's *geometry* without error (the renderer's parameters of each face,
:func:`mint_rare_disease.faces.face_params`, as a landmark model would measure them) and learns the
diseases from the training faces, as the gestalt teacher must:

- ``face_geometry``: multinomial logistic regression (L2, C = 1, not tuned) on the parameters;
- ``notes_and_face_geometry``: its log-probabilities added to the notes' naive Bayes scores (two
  views taken as independent, weight 1, not tuned);
- ``face_geometry_annotated`` / ``notes_and_face_geometry_annotated``: the same geometry scored
  generatively, through hpo3's facial annotations of each disease and each finding's effect on the
  drawing (the renderer's ``term_effects``: an appearance model learned without error). A disease
  showing ``k`` of its ``n`` annotated facial findings at random gives a Gaussian with mean
  ``(k/n) sum_t e_t`` and covariance ``(k/n)(1 - k/n) sum_t e_t e_t^T + s^2 I``; ``k`` and ``s`` are
  fitted on the train + val faces (maximum likelihood of their own diseases), the fused view adds
  the normalized log-likelihoods to the naive Bayes scores (weight 1, not tuned).

    python benchmarks/face_ceiling.py runs/s0 runs/s1 runs/s2 --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from orpo_step import report  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories where `mint teach` has run")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    from rich.console import Console

    from mint_core.metrics import wilson_intervals as with_intervals
    from mint_core.predict import open_run
    from mint_core.registry import get_registry
    from mint_hpo import HpoConfig
    from mint_hpo.scoring import NaiveBayes

    registry = get_registry()
    alpha = HpoConfig().alpha  # the `hpo` teacher's smoothing
    views = {"notes": ("notes_hpo_ids", "notes_excluded_hpo_ids"), "face_terms": ("facial_hpo_ids", None),
             "notes_and_face_terms": ("hpo_ids", "notes_excluded_hpo_ids")}
    result: dict = {"benchmark": "face_ceiling", "alpha": alpha}
    for run_dir in args.run_dirs:
        run = open_run(run_dir, registry=registry, console=Console(stderr=True, quiet=True))
        config, data = run.config, run.load_data()
        ids = data.labels.ids
        fit_on, test = data.split("train") + data.split("val"), data.split("test")
        truth = torch.tensor([ids.index(case.label_id) for case in test])
        scores: dict[str, torch.Tensor] = {}
        for view, (observed, excluded) in views.items():
            model = NaiveBayes(ids, alpha=alpha).fit(
                [(case.label_id, case.meta[observed]) for case in fit_on])
            scores[view] = torch.tensor([model.log_scores(case.meta[observed], case.meta[excluded] if excluded else [])
                                         for case in test], dtype=torch.float64)
        # The face's geometry, read without error: the parameters the renderer drew it from.
        key = f"{config['seed']}:{config['task']['seed']}"
        fit_geometry, test_geometry = (
            torch.stack([face_geometry(case.meta["facial_hpo_ids"], key=f"{key}:{case.id}") for case in cases])
            for cases in (fit_on, test))
        fit_labels = torch.tensor([ids.index(case.label_id) for case in fit_on])
        log_probs = logistic_log_probs(fit_geometry, fit_labels, test_geometry, n_labels=len(ids))
        scores["face_geometry"] = log_probs
        scores["notes_and_face_geometry"] = scores["notes"] + log_probs
        annotated = AnnotatedGeometry(ids).fit(fit_geometry, fit_labels)
        log_likelihoods = annotated.log_probs(test_geometry)
        scores["face_geometry_annotated"] = log_likelihoods
        scores["notes_and_face_geometry_annotated"] = scores["notes"] + log_likelihoods
        result[f"{run_dir.name}_annotated_fit"] = {"k": annotated.k, "s": annotated.s}
        for view, view_scores in scores.items():
            hits = int((view_scores.argmax(-1) == truth).sum())
            # Test top-1 with its 95% Wilson interval, as `mint teach` reports the teachers.
            result[f"{run_dir.name}_{view}"] = with_intervals({"top1": round(hits / len(test), 3), "n": len(test)})
    return report(result, as_json=args.json)


def face_geometry(facial_terms: list[str], *, key: str) -> torch.Tensor:
    """The renderer's parameters for a case's face (jitter included): what a perfect landmark reader measures."""
    from mint_rare_disease.faces import PARAM_NAMES, face_params

    params = face_params(facial_terms, key=key)
    return torch.tensor([getattr(params, name) for name in PARAM_NAMES], dtype=torch.float64)


class AnnotatedGeometry:
    """Each disease's face geometry predicted from hpo3's facial annotations and the renderer's term effects."""

    def __init__(self, label_ids: list[str], *, ks: tuple[float, ...] = (1, 2, 3, 4, 5, 6, 7),
                 ss: tuple[float, ...] = (0.06, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.5)):
        from mint_rare_disease import hpo
        from mint_rare_disease.faces import PARAM_NAMES, term_effects

        self.ks, self.ss = ks, ss
        self.effects = []  # per disease: [n facial findings, n parameters]
        for label_id in label_ids:
            facial = [t for t in hpo.disease_terms(label_id) if hpo.is_facial(t)]
            rows = [[term_effects(t).get(name, 0.0) for name in PARAM_NAMES] for t in facial]
            self.effects.append(torch.tensor(rows or [[0.0] * len(PARAM_NAMES)], dtype=torch.float64))
        self.k, self.s = ks[0], ss[0]

    def _log_probs(self, x: torch.Tensor, k: float, s: float) -> torch.Tensor:
        noise = s * s * torch.eye(self.effects[0].shape[1], dtype=torch.float64)
        return disease_log_probs(x, self.effects, torch.zeros_like(noise[0]), noise, k)

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> AnnotatedGeometry:
        """Pick ``k`` and ``s`` by the mean log-probability of each face's own disease."""
        self.k, self.s = max(((k, s) for k in self.ks for s in self.ss),
                             key=lambda ks: mean_log_prob_of_truth(self._log_probs(x, *ks), y))
        return self

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self._log_probs(x, self.k, self.s)


def disease_log_probs(x: torch.Tensor, disease_effects: list[torch.Tensor], bias: torch.Tensor,
                      noise: torch.Tensor, k: float) -> torch.Tensor:
    """Each disease's normalized log-likelihood for each face's geometry ``x`` (rows sum to 1 in probability).

    A disease showing ``k`` of its ``n`` findings (rows of its ``[n, parameters]`` effects) at random:
    mean ``bias + (k/n) sum e_t``, covariance ``(k/n)(1 - k/n) sum e_t e_t^T + noise``.
    """
    columns = []
    for effects in disease_effects:
        p = min(1.0, k / len(effects))  # len >= 1: a disease without findings has one zero row
        mean = bias + p * effects.sum(0)
        covariance = p * (1 - p) * effects.T @ effects + noise
        columns.append(torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance).log_prob(x))
    return torch.log_softmax(torch.stack(columns, dim=-1), dim=-1)


def mean_log_prob_of_truth(log_probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean log-probability given to each row's own label ``y``: what the generative fits maximize."""
    return float(log_probs[torch.arange(len(y)), y].mean())


def logistic_log_probs(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, *, n_labels: int,
                       c: float = 1.0) -> torch.Tensor:
    """Test log-probabilities of a multinomial logistic regression fitted on ``(x, y)``: mean cross-entropy
    plus ``||W||^2 / (2 c n)`` (scikit-learn's ``C``), features standardized on the training rows, L-BFGS."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x, x_test = (x - mean) / std, (x_test - mean) / std
    weight = torch.zeros(x.shape[1], n_labels, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_labels, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + (weight ** 2).sum() / (2 * c * len(x))
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return torch.log_softmax(x_test @ weight + bias, dim=-1)


if __name__ == "__main__":
    main()
