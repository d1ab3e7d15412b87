"""What a person reads: the terminal tables and ``report.md`` of a run's metrics and paired differences."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.table import Table
from rich.text import Text

from mint_core import io

BASE_ROLE = "base"


def format_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))


METRIC_ORDER = ("top1", "top3", "top5", "top10", "rank_top1", "rank_top3", "rank_top5", "rank_top10", "rank_mrr",
                "rank_raw_top1", "rank_raw_top3", "rank_raw_top5", "rank_raw_top10", "rank_raw_mrr",
                "rank_top1_max_label_share", "rank_raw_top1_max_label_share", "well_formed", "hallucination_rate",
                "teacher_top1_agreement", "teacher_topk_coverage", "teacher_bottomq_avoidance")


def metric_columns(all_metrics: dict[str, dict[str, Any]]) -> list[str]:
    present = {k for m in all_metrics.values() for k, v in m.items() if isinstance(v, (int, float))}
    return [k for k in METRIC_ORDER if k in present]


def roles_in_order(all_metrics: dict[str, Any]) -> list[str]:
    order = ["teacher", BASE_ROLE, "rag", "sft", "dpo", "kto", "orpo"]
    return [r for r in order if r in all_metrics] + sorted(r for r in all_metrics if r not in order)


#: Left out of the terminal (all of them are in report.md and metrics.json).
TABLE_SKIPS = {"top3", "rank_top3", "rank_raw_top3", "rank_raw_top5", "rank_raw_top10", "rank_mrr", "rank_raw_mrr",
               "rank_raw_top1_max_label_share", "teacher_bottomq_avoidance"}
SHORT_NAMES = {"rank_top1": "r-top1", "rank_top3": "r-top3", "rank_top5": "r-top5", "rank_top10": "r-top10",
               "rank_raw_top1": "raw-top1", "rank_raw_top10": "raw-top10", "rank_top1_max_label_share": "1st-lab",
               "well_formed": "formed", "hallucination_rate": "halluc", "teacher_top1_agreement": "T-agree",
               "teacher_topk_coverage": "T-top-k", "teacher_bottomq_avoidance": "T-avoid"}
LEGEND = ("How to read: value [95% interval]; teacher rows: Wilson score interval, students: percentile "
          "bootstrap over the test cases. top1/top10: the true label is first / among the first 10 of the "
          "written list. r-: ranking mode (every label scored by the student's log-likelihood), calibrated "
          "(eval.calibration); raw-: uncalibrated. 1st-lab: share of cases whose first label is the most "
          "frequent first label. formed: well-formed answers. halluc: listed names matching no label. T-agree: "
          "first label = the teacher's; T-top-k: share of the teacher's top-k listed.")
TABLE_WIDTH = 100


def format_share(values: dict[str, Any], key: str, digits: int = 2) -> str:
    """``.12 [.05,.22]``: a share and its interval, compact enough for a 100-column table."""
    value = values.get(key)
    if not isinstance(value, (int, float)):
        return "—"

    def number(x: float) -> str:  # shares lie in [0, 1]: the leading zero says nothing
        text = f"{x:.{digits}f}"
        return text[1:] if text.startswith("0.") else text

    interval = values.get(f"{key}_ci")
    return f"{number(value)} [{number(interval[0])},{number(interval[1])}]" if interval else number(value)


def _fit_columns(columns: list[str], cells: dict[str, list[str]], first_width: int, width: int) -> list[list[str]]:
    """Columns split into groups whose tables fit ``width`` characters (rich adds 3 per column)."""
    groups: list[list[str]] = [[]]
    used = first_width + 4
    for column in columns:
        need = max(len(SHORT_NAMES.get(column, column)), *(len(c) for c in cells[column])) + 3
        if groups[-1] and used + need > width:
            groups.append([])
            used = first_width + 4
        groups[-1].append(column)
        used += need
    return [g for g in groups if g]


def metrics_tables(all_metrics: dict[str, dict[str, Any]], title: str = "MINT results",
                   width: int = TABLE_WIDTH) -> list[Table | Text]:
    """The closing summary: the legend, then one row per role, split into as many tables as ``width`` needs."""
    roles = roles_in_order(all_metrics)
    columns = [c for c in metric_columns(all_metrics) if c not in TABLE_SKIPS]
    cells = {c: [format_share(all_metrics[r], c) for r in roles] for c in columns}
    role_width = max(len("role"), *(len(r) for r in roles)) if roles else 4
    groups = _fit_columns(columns, cells, role_width, width)
    tables: list[Table | Text] = [Text(f"{title}\n", style="bold"), Text(LEGEND, style="dim")]
    for group in groups:  # the legend comes first: a reader meets it before the abbreviations
        table = Table()
        table.add_column("role", style="bold", no_wrap=True)
        for column in group:
            table.add_column(SHORT_NAMES.get(column, column), justify="right", no_wrap=True)
        for j, role in enumerate(roles):
            table.add_row(role, *(cells[c][j] for c in group))
        tables.append(table)
    return tables


def metrics_table(all_metrics: dict[str, dict[str, Any]], title: str = "MINT results") -> Table:
    """All summary columns in one table (see :func:`metrics_tables` for the terminal-width split)."""
    return next(t for t in metrics_tables(all_metrics, title=title, width=10**6) if isinstance(t, Table))


def deltas_table(deltas: Sequence[dict[str, Any]], title: str = "Paired differences") -> Table:
    """One row per (role, reference, metric): delta, its paired-bootstrap 95% CI, McNemar's exact p and,
    in words, whether the difference is significant (the interval excludes 0); the caption sums it up."""
    table = Table(title=title, caption=significance_sentence(deltas) + "\ndelta = role minus reference on the same "
                  "test cases; 95% CI: paired bootstrap over cases; p: McNemar exact on 0/1 hits, "
                  "else sign test over cases")
    for column in ("role", "vs", "metric", "delta", "95% CI", "p", "significant"):
        table.add_column(column, justify="right" if column in ("delta", "95% CI", "p") else "left", no_wrap=True)
    for row in deltas:
        table.add_row(row["role"], row["reference"], SHORT_NAMES.get(row["metric"], row["metric"]),
                      f"{row['delta']:+.3f}", f"[{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}]",
                      p_text(row), "yes" if significant(row) else "no")
    return table


def p_text(row: dict[str, Any]) -> str:
    """McNemar's exact p on 0/1 outcomes, else the sign test over cases (the captions say which)."""
    p = row["p_mcnemar"] if row.get("p_mcnemar") is not None else row.get("p_sign")
    return "—" if p is None else f"{p:.3g}"


def significant(row: dict[str, Any]) -> bool:
    """A paired difference counts when its 95% interval excludes 0."""
    low, high = row["ci"]
    return low > 0 or high < 0


def significance_sentence(deltas: Sequence[dict[str, Any]]) -> str:
    """E.g. 'orpo vs base: better on top1, top10; no significant difference on r-top1.'"""
    parts = []
    pairs = dict.fromkeys((row["role"], row["reference"]) for row in deltas)
    for role, reference in pairs:
        rows = [r for r in deltas if (r["role"], r["reference"]) == (role, reference)]
        name = lambda r: SHORT_NAMES.get(r["metric"], r["metric"])  # noqa: E731
        better = [name(r) for r in rows if significant(r) and r["delta"] > 0]
        worse = [name(r) for r in rows if significant(r) and r["delta"] < 0]
        same = [name(r) for r in rows if not significant(r)]
        words = ([f"better on {', '.join(better)}"] if better else []) + \
                ([f"worse on {', '.join(worse)}"] if worse else []) + \
                ([f"no significant difference on {', '.join(same)}"] if same else [])
        parts.append(f"{role} vs {reference}: {'; '.join(words)}.")
    return " ".join(parts)


def markdown_table(all_metrics: dict[str, dict[str, Any]]) -> str:
    columns = metric_columns(all_metrics)
    lines = ["| role | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for role in roles_in_order(all_metrics):
        values = all_metrics[role]
        cells = [format_share(values, c, digits=3) for c in columns]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_deltas(deltas: Sequence[dict[str, Any]]) -> str:
    lines = ["| role | vs | metric | delta | 95% CI | p | n | significant |",
             "|---|---|---|---|---|---|---|---|"]
    for row in deltas:
        p = p_text(row)
        lines.append(f"| {row['role']} | {row['reference']} | {row['metric']} | {row['delta']:+.3f} | "
                     f"[{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}] | {p} | {row['n']} | "
                     f"{'yes' if significant(row) else 'no'} |")
    return "\n".join(lines + ["", significance_sentence(deltas)] if deltas else lines)


def teacher_table(teacher: dict[str, Any]) -> str:
    """The teacher's test figures beside its variants (ablation, baselines) and its out-of-fold train figures."""
    rows = dict(teacher.get("variants") or {"teacher": teacher})
    if teacher.get("train_oof"):
        rows["teacher, train out-of-fold"] = teacher["train_oof"]
    ks = [k for k in ("top1", "top10") if k in teacher] or [k for k in teacher if k.startswith("top") and "_" not in k]

    def cell(values: dict[str, Any], k: str) -> str:
        ci = values.get(f"{k}_ci")
        return f"{values[k]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else (f"{values[k]:.3f}" if k in values else "—")

    lines = ["| ranker | " + " | ".join(ks) + " | n |", "|---" * (len(ks) + 2) + "|"]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(values, k) for k in ks) + f" | {values.get('n', '—')} |")
    return "\n".join(lines)


def render_report(config: dict[str, Any], run_dir: Path, all_metrics: dict[str, dict[str, Any]]) -> str:
    """``report.md`` of a run directory: the metrics, paired differences, teacher, preference data, curves."""
    parts = [f"# MINT run `{config['name']}`", "",
             f"task `{config['task']['name']}`, teacher `{config['teacher']['name']}`, "
             f"builder `{config['builder']['name']}`, student `{config['student']['name']}`, seed {config['seed']}.",
             "", "## Metrics (test split)", "",
             "Each share: value [95% percentile-bootstrap interval over test cases, 2,000 resamples]. `rank_*`: "
             f"ranking mode calibrated by `{config['eval'].get('calibration', 'none')}`; `rank_raw_*`: plain "
             "log-likelihood sums.", "", markdown_table(all_metrics), ""]
    deltas_path = run_dir / "deltas.json"
    deltas = io.read_json(deltas_path) if deltas_path.exists() else []
    if deltas:
        parts += ["## Paired differences (same test cases)", "",
                  "delta = role minus reference; 95% paired-bootstrap interval; McNemar's exact test on the hits.",
                  "", markdown_deltas(deltas), ""]
    teacher = all_metrics.get("teacher") or {}
    if teacher.get("variants") or teacher.get("train_oof"):
        parts += ["## Teacher", "", teacher_table(teacher), ""]
    summary_path = run_dir / "prefs_summary.json"
    if summary_path.exists():
        parts += ["## Preference data", ""]
        for builder, summary in io.read_json(summary_path, expect=dict).items():
            parts.append(f"- `{builder}`: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
        parts.append("")
    curves = sorted(run_dir.glob("students/*/training_curve.png"))
    if curves:
        parts += ["## Training curves", ""] + [f"![{p.parent.name}]({p.relative_to(run_dir)})" for p in curves]
    return "\n".join(parts) + "\n"
