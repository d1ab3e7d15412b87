"""Where ORPO's odds ratio comes from, token by token: scaffolding, first token of a name, rest of a name.

For the pairs of a run (``preferences.jsonl``) this scores every answer token of the chosen and
the rejected list under a student (the base model, or a trained adapter), labels each token with
its role (:mod:`mint_engine.roles`) and reports, per role:

- its share of the answer tokens;
- the mean log-probability of its tokens in the chosen and in the rejected answers;
- its contribution to the gap between the answers' mean log-probs (the quantity the paper's odds
  ratio is built on): ``sum_role(chosen)/n_chosen - sum_role(rejected)/n_rejected``, summed over
  roles it is the whole gap;
- its share of the odds-ratio term's gradient at the paper setting: with mean log-probs every
  token of an answer gets the same weight, so this is its share of the tokens; with
  ``optimizer.logp_tokens=decision`` only first tokens carry it.

    python benchmarks/orpo_attribution.py --run-dir runs/rare-disease-gestalt-orpo --json
    python benchmarks/orpo_attribution.py --run-dir R --adapter R/students/orpo/adapter --pairs 80 --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mint_engine.roles import NAME_FIRST, NAME_REST, ROLE_NAMES, SCAFFOLD, answer_token_roles


def token_logps(sm, prompt_ids: list[int], answer_ids: list[int]) -> list[float]:
    ids = torch.tensor([prompt_ids + answer_ids], device=sm.device)
    with torch.inference_mode():
        logits = sm.model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    logps = torch.log_softmax(logits, dim=-1)
    return logps.gather(1, torch.tensor(answer_ids, device=logps.device)[:, None])[:, 0].tolist()


def attribution(sm, examples: list) -> dict:
    from mint_engine.encoding import encode_pair

    roles = (SCAFFOLD, NAME_FIRST, NAME_REST)
    totals = {side: {r: [0.0, 0] for r in roles} for side in ("chosen", "rejected")}
    gap_parts = {r: 0.0 for r in roles}
    for example in examples:
        feature = encode_pair(sm, example, max_length=1024, max_prompt_length=768)
        per_side = {}
        for side in ("chosen", "rejected"):
            ids = feature[f"{side}_ids"]
            answer = example.chosen if side == "chosen" else example.rejected
            labels = answer_token_roles(sm, answer, ids)
            logps = token_logps(sm, feature["prompt_ids"], ids)
            per_side[side] = (labels, logps)
            for label, logp in zip(labels, logps):
                totals[side][label][0] += logp
                totals[side][label][1] += 1
        (lc, pc), (lr, pr) = per_side["chosen"], per_side["rejected"]
        for r in roles:
            gap_parts[r] += (sum(p for l, p in zip(lc, pc) if l == r) / len(lc)
                             - sum(p for l, p in zip(lr, pr) if l == r) / len(lr)) / len(examples)
    n_tokens = sum(totals[s][r][1] for s in totals for r in roles)
    table = {}
    for r in roles:
        count = totals["chosen"][r][1] + totals["rejected"][r][1]
        table[ROLE_NAMES[r]] = {
            "token_share": round(count / n_tokens, 3),
            "mean_logp_chosen": round(totals["chosen"][r][0] / max(1, totals["chosen"][r][1]), 3),
            "mean_logp_rejected": round(totals["rejected"][r][0] / max(1, totals["rejected"][r][1]), 3),
            "gap_contribution": round(gap_parts[r], 4),
            "or_gradient_share_paper": round(count / n_tokens, 3),
            "or_gradient_share_decision": 1.0 if r == NAME_FIRST else 0.0,
        }
    return {"pairs": len(examples), "mean_logp_gap": round(sum(gap_parts.values()), 4), "roles": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--adapter", action="append", default=[],
                        help="a trained adapter folder (repeatable); the base student is always measured")
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from mint_core import io
    from mint_core.predict import open_run
    from mint_core.types import PreferenceExample

    run_dir = Path(args.run_dir)
    run = open_run(run_dir)
    examples = io.read_jsonl(run_dir / "preferences.jsonl", parse=PreferenceExample.from_dict)[:args.pairs]
    student = run.component("student")
    result = {"run_dir": str(run_dir), "students": {}}
    for adapter in [None, *args.adapter]:
        sm = student.load(ctx=run.ctx, adapter_dir=Path(adapter) if adapter else None)
        sm.inference_dtype = None  # score in the weights' dtype (fp32): the reference numerics
        sm.model.eval()
        result["students"][adapter or "base"] = attribution(sm, examples)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
