"""``mint compare``: the MINT paper's grid on one task and split.

One teacher and one set of rankings serve every method; each optimizer reads the preference set
its builder makes (topk pairs for ORPO/DPO, unpaired for KTO, supervised for SFT). DPO starts
from the SFT adapter when both are in the grid, as the paper did. ``optimizer.key=value``
overrides apply to every optimizer that has that option (``optimizer.max_steps=20``), except
the learning rate of a method named in ``compare.learning_rates`` (``dpo=2e-4,kto=1e-4``): a
comparison is fair when each method trains at its own rate, chosen on the validation split
(``benchmarks/method_lr_sweep.py``); at ORPO's rate DPO from SFT collapses.

Every method is compared with ``base`` (and ``sft``) on the same test cases, and the run's own
optimizer (ORPO) with every other method: the difference, a paired-bootstrap 95% interval and
McNemar's exact p (``comparison.md/json``, error bars in
``comparison.png``).

Seeds (``mint compare --seeds 0,1,2``): the teacher and the preference sets are those of the run's
own seed and are shared by every seed, so the spread across seeds measures the *student's*
training (LoRA init, data order), not a different teacher or split. Each further seed trains and
evaluates every method in ``seeds/seed-<s>/`` (the shared artifacts copied there, marked done);
``base`` is evaluated once, since greedy decoding and scoring do not depend on the seed. The
run's own seed is always among the seeds (it trains on the teacher it shares). The
summary gives each metric's mean ± sd over seeds beside a pooled interval (per-case outcomes
averaged over seeds, bootstrapped over cases). An explicit ``optimizer.seed`` would pin training
to one seed and defeat the point.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from mint_core import io
from mint_core.config import method_learning_rates, parse_overrides
from mint_core.pipeline import Run
from mint_core.report import BASE_ROLE, SHORT_NAMES, markdown_deltas, markdown_table, roles_in_order
from mint_core.registry import MintError

PAPER_ORDER = ["rag", "sft", "dpo", "kto", "orpo"]


def default_methods(run: Run) -> list[str]:
    """base, the paper's methods, then every other installed optimizer that serves this student's modality."""
    modality = getattr(run.component("student"), "modality", "text")
    installed = [name for name in run.registry.names("optimizer")
                 if modality in getattr(type(run.registry.create("optimizer", name)), "modalities", (modality,))]
    return [BASE_ROLE] + [m for m in PAPER_ORDER if m in installed] + [m for m in installed if m not in PAPER_ORDER]


def run_comparison(run: Run, *, methods: Sequence[str] | None = None, explicit_overrides: Sequence[str] = (),
                   seeds: Sequence[int] | None = None) -> dict[str, dict[str, Any]]:
    """Train and evaluate ``methods`` (per seed in ``seeds``); writes comparison.md/json/png, returns metrics.

    The returned metrics are the run's own seed's; with several seeds ``comparison.json`` adds
    each seed's metrics and the across-seed summary (see the module docstring).
    """
    methods = list(methods or default_methods(run))
    own = int(run.config["seed"])
    seeds = [own] + [int(s) for s in seeds or () if int(s) != own]  # the shared teacher's seed always runs
    selected = _compare_one_seed(run, methods, explicit_overrides)
    runs = {int(run.config["seed"]): run}
    for seed in seeds:
        if seed not in runs:
            runs[seed] = seed_run(run, seed)
            _compare_one_seed(runs[seed], [m for m in methods if m != BASE_ROLE], explicit_overrides)
    seed_summary = summarize_seeds(run, {s: runs[s] for s in seeds}, list(selected)) if len(seeds) > 1 else None
    deltas = run.paired_deltas(selected, focus=run.config["optimizer"]["name"])  # + ORPO minus each method
    write_comparison(run, selected, deltas, seed_summary)
    return selected


def _compare_one_seed(run: Run, methods: list[str], explicit_overrides: Sequence[str]) -> dict[str, dict[str, Any]]:
    for method in methods:
        if method != BASE_ROLE:
            run.registry.get("optimizer", method)  # fail before any work on a typo
    shared = shared_optimizer_options(run, explicit_overrides)
    rates = _learning_rates(run)

    def section_of(method: str) -> dict[str, Any]:
        section = run.optimizer_section(method, shared)
        return {**section, "learning_rate": rates[method]} if method in rates else section

    run.teach()
    trained: list[str] = []
    for method in [m for m in methods if m != BASE_ROLE]:
        section = section_of(method)
        if method == "dpo" and "sft" in methods and "init_adapter" in _fields(run, method) and \
                not section.get("init_adapter"):
            section = {**section, "init_adapter": str(run.student_dir("sft") / "adapter")}
        if method == "dpo" and "sft" in methods and "sft" not in trained:
            run.train(section=section_of("sft"))
            trained.append("sft")
        if method not in trained:
            run.train(section=section)
            trained.append(method)
    roles = [m for m in methods if m == BASE_ROLE or m in trained]
    all_metrics = run.evaluate(roles)
    return {role: all_metrics[role] for role in roles_in_order(all_metrics) if role in [*roles, "teacher"]}


#: What a seed's run shares with the run it came from: the task's data, the teacher's rankings, the preferences.
SHARED_ARTIFACTS = ("cases.jsonl", "labels.json", "task.json", "split.json", "rankings.jsonl", "prefs_summary.json")


def seed_run(parent: Run, seed: int, run_dir: Path | None = None) -> Run:
    """``seeds/seed-<seed>/`` (or ``run_dir``): the parent's task data, rankings and preference sets,
    its own training seed."""
    run = Run(registry=parent.registry, config={**parent.config, "seed": seed},
              run_dir=run_dir or parent.run_dir / "seeds" / f"seed-{seed}", console=parent.console)
    run.save_config()
    for name in SHARED_ARTIFACTS:
        if (parent.run_dir / name).exists():
            shutil.copyfile(parent.run_dir / name, run.run_dir / name)
    if (parent.run_dir / "images").is_dir() and not (run.run_dir / "images").exists():
        (run.run_dir / "images").symlink_to((parent.run_dir / "images").resolve(), target_is_directory=True)
    teacher = io.read_json(parent.run_dir / "metrics.json").get("teacher")
    if teacher is not None:
        io.update_json(run.run_dir / "metrics.json", "teacher", teacher)
    run._mark_done("teach", run.teach_fp())
    for key, fp in parent._state().items():
        builder = key.partition("prefs:")[2]
        path = parent.preferences_path(builder) if builder else None
        if path is not None and path.exists() and fp == parent.prefs_fp(parent.builder_section(builder)):
            shutil.copyfile(path, run.preferences_path(builder))
            run._mark_done(key, run.prefs_fp(run.builder_section(builder)))
    return run


def summarize_seeds(run: Run, runs: dict[int, Run], roles: Sequence[str]) -> dict[str, Any]:
    """Each role's metrics per seed, mean ± sd over seeds, and pooled intervals and deltas vs base.

    Pooled: each case's outcome averaged over seeds, then bootstrapped over cases (base, evaluated
    once, enters with its single outcome).
    """
    import statistics

    from mint_core.metrics import paired_comparisons
    from mint_core.stats import bootstrap_interval

    per_seed = {seed: io.read_json(r.run_dir / "metrics.json") for seed, r in runs.items()}
    summary: dict[str, Any] = {"seeds": list(runs), "shared": "teacher and preferences of seed "
                               f"{run.config['seed']}; base evaluated once", "roles": {}}
    pooled_predictions: dict[str, list[dict[str, Any]]] = {}
    for role in roles:
        if role == "teacher":
            continue
        sources = [run] if role == BASE_ROLE else [r for r in runs.values()
                                                   if r.prediction_paths(role)[0].exists()]
        rows_by_seed = [r.load_predictions(role) for r in sources]
        pooled = _average_outcomes(rows_by_seed)
        pooled_predictions[role] = pooled
        entry: dict[str, Any] = {}
        keys = [k for k, v in per_seed[int(run.config["seed"])].get(role, {}).items()
                if isinstance(v, (int, float)) and f"{k}_ci" in per_seed[int(run.config["seed"])][role]]
        for key in keys:
            values = [per_seed[s][role][key] for s in runs if role in per_seed[s] and key in per_seed[s][role]]
            if role == BASE_ROLE:
                values = values[:1]
            outcomes = [row["outcomes"][key] for row in pooled if key in row["outcomes"]]
            entry[key] = {"values": values, "mean": round(statistics.fmean(values), 6),
                          "sd": round(statistics.stdev(values), 6) if len(values) > 1 else 0.0,
                          "pooled_ci": bootstrap_interval(outcomes) if outcomes else None}
        summary["roles"][role] = entry
    summary["pooled_deltas"] = paired_comparisons(pooled_predictions)
    return summary


def _average_outcomes(rows_by_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per case, each outcome's mean over the seeds that evaluated it."""
    sums: dict[str, dict[str, list[float]]] = {}
    for rows in rows_by_seed:
        for row in rows:
            for key, value in row.get("outcomes", {}).items():
                sums.setdefault(row["case_id"], {}).setdefault(key, []).append(float(value))
    return [{"case_id": case_id, "outcomes": {k: sum(v) / len(v) for k, v in outcomes.items()}}
            for case_id, outcomes in sums.items()]


def shared_optimizer_options(run: Run, explicit_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Options every optimizer of the grid shares: what the run's optimizer section sets away from
    its component's defaults (config file, demo sizing), and every ``optimizer.*`` override."""
    section = run.config["optimizer"]
    defaults = {name: default for name, _, default, _ in run.registry.get("optimizer", section["name"]).config_fields()}
    shared = {k: v for k, v in section.items() if k != "name" and k in defaults and v != defaults[k]}
    shared.update(parse_overrides(list(explicit_overrides)).get("optimizer") or {})
    shared.pop("name", None)
    return shared


def _learning_rates(run: Run) -> dict[str, float]:
    """``compare.learning_rates`` as {method: rate}; a method that is not an installed optimizer is an error."""
    rates = method_learning_rates((run.config.get("compare") or {}).get("learning_rates", ""))
    for method in rates:
        if method not in run.registry.names("optimizer"):
            raise MintError(f"compare.learning_rates names {method!r}, which is not an installed optimizer "
                            f"(installed: {', '.join(run.registry.names('optimizer'))})")
        if "learning_rate" not in _fields(run, method):
            raise MintError(f"compare.learning_rates names {method!r}, whose options have no learning_rate; "
                            "drop it from compare.learning_rates")
    return rates


def _fields(run: Run, optimizer: str) -> set[str]:
    return {name for name, *_ in run.registry.get("optimizer", optimizer).config_fields()}


def write_comparison(run: Run, metrics: dict[str, dict[str, Any]], deltas: Sequence[dict[str, Any]] = (),
                     seeds: dict[str, Any] | None = None) -> None:
    """comparison.md (tables), comparison.json (``metrics``, ``deltas``, ``seeds``), comparison.png."""
    config = run.config
    parts = [f"# MINT comparison: task `{config['task']['name']}`, teacher `{config['teacher']['name']}`, "
             f"student `{config['student']['name']}`, seed {config['seed']}", "",
             "Each share: value [95% bootstrap interval over test cases].", "", markdown_table(metrics), ""]
    if deltas:
        parts += ["## Paired differences (same test cases)", "",
                  "delta = method minus reference; 95% paired-bootstrap interval; p: McNemar's exact test on 0/1 "
                  "hits, else the exact sign test over cases.", "",
                  markdown_deltas(deltas), ""]
    if seeds:
        parts += [f"## Across seeds {', '.join(map(str, seeds['seeds']))}", "",
                  f"Shared: {seeds['shared']}. mean ± sd over seeds; pooled: per-case outcomes averaged over "
                  "seeds, bootstrapped over cases.", "", markdown_seeds(seeds), ""]
        if seeds.get("pooled_deltas"):
            parts += ["Pooled paired differences (seed averages are not 0/1, so p is the exact sign test over cases):", "",
                      markdown_deltas(seeds["pooled_deltas"]), ""]
    io.write_text(run.run_dir / "comparison.md", "\n".join(parts))
    io.write_json(run.run_dir / "comparison.json", {"metrics": metrics, "deltas": list(deltas), "seeds": seeds})
    plot_comparison(metrics, run.run_dir / "comparison.png", seeds=seeds)


def markdown_seeds(seeds: dict[str, Any]) -> str:
    lines = ["| role | metric | mean ± sd | per seed | pooled 95% CI |", "|---|---|---|---|---|"]
    for role, entry in seeds["roles"].items():
        for key, stat in entry.items():
            ci = stat["pooled_ci"]
            lines.append(f"| {role} | {key} | {stat['mean']:.3f} ± {stat['sd']:.3f} | "
                         + ", ".join(f"{v:.3f}" for v in stat["values"])
                         + (f" | [{ci[0]:.3f}, {ci[1]:.3f}] |" if ci else " | — |"))
    return "\n".join(lines)


def plot_comparison(metrics: dict[str, dict[str, Any]], path: Path | str, seeds: dict[str, Any] | None = None) -> None:
    """Bars of top-1 and the largest top-k per method (ranking mode's too) with 95% interval error bars.

    With ``seeds``, bars are the means over seeds, error bars the pooled intervals and dots each
    seed's value. The teacher is drawn as reference lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = [r for r in metrics if r != "teacher"]
    keys: list[str] = []
    for prefix in ("top", "rank_top"):
        found = sorted({int(k[len(prefix):]) for role in roles for k in metrics[role]  # the students' k, not
                        if k.startswith(prefix) and k[len(prefix):].isdigit()})          # the teacher's
        keys += [f"{prefix}{k}" for k in sorted({found[0], found[-1]})] if found else []
    fig, ax = plt.subplots(figsize=(1.6 * max(len(roles), 3) + 2.5, 4.2))
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        xs = [x + i * width for x in range(len(roles))]
        stats = [(seeds or {}).get("roles", {}).get(r, {}).get(key) for r in roles]
        values = [s["mean"] if s else (metrics[r].get(key) or 0.0) for r, s in zip(roles, stats)]
        intervals = [s["pooled_ci"] if s else metrics[r].get(f"{key}_ci") for r, s in zip(roles, stats)]
        lower = [v - ci[0] if ci else 0.0 for v, ci in zip(values, intervals)]
        upper = [ci[1] - v if ci else 0.0 for v, ci in zip(values, intervals)]
        bars = ax.bar(xs, values, width, label=key.replace("rank_", "r-"), yerr=[lower, upper], capsize=3,
                      error_kw={"elinewidth": 1})
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2, label_type="center")
        color = bars.patches[0].get_facecolor()
        for x, stat in zip(xs, stats):
            if stat and len(stat["values"]) > 1:
                ax.scatter([x] * len(stat["values"]), stat["values"], s=8, color="black", zorder=3)
        teacher = metrics.get("teacher", {}).get(key)
        if teacher is not None:
            ax.axhline(teacher, linestyle="--", linewidth=1, color=color, label=f"teacher {key}")
    ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(roles))], roles)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (test split), 95% CI")
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def seeds_table(seeds: dict[str, Any]):
    """Terminal summary across seeds: the compared hit keys' mean ± sd and pooled interval per role."""
    from rich.table import Table

    table = Table(title=f"Across seeds {', '.join(map(str, seeds['seeds']))}",
                  caption=f"shared: {seeds['shared']}; pooled CI: per-case outcomes averaged over seeds")
    for column in ("role", "metric", "mean ± sd", "pooled 95% CI"):
        table.add_column(column, justify="left" if column in ("role", "metric") else "right", no_wrap=True)
    headline = {d["metric"] for d in seeds.get("pooled_deltas", [])} or None
    for role, entry in seeds["roles"].items():
        for key, stat in entry.items():
            if headline is not None and key not in headline:
                continue
            ci = stat["pooled_ci"]
            table.add_row(role, SHORT_NAMES.get(key, key), f"{stat['mean']:.3f} ± {stat['sd']:.3f}",
                          f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "—")
    return table
