"""``mint compare``: the MINT paper's grid on one task and split.

One teacher and one set of rankings serve every method; each optimizer reads the preference set
its builder makes (topk pairs for ORPO/DPO, unpaired for KTO, supervised for SFT). DPO starts
from the SFT adapter when both are in the grid, as the paper did. ``optimizer.key=value``
overrides apply to every optimizer that has that option (``optimizer.max_steps=20``).
"""

from __future__ import annotations

from typing import Any, Sequence

from mint_core import io
from mint_core.config import parse_overrides
from mint_core.pipeline import BASE_ROLE, Run, markdown_table, roles_in_order

PAPER_ORDER = ["rag", "sft", "dpo", "kto", "orpo"]


def default_methods(run: Run) -> list[str]:
    """base, the paper's methods, then every other installed optimizer that serves this student's modality."""
    modality = getattr(run.component("student"), "modality", "text")
    installed = [name for name in run.registry.names("optimizer")
                 if modality in getattr(type(run.registry.create("optimizer", name)), "modalities", (modality,))]
    return [BASE_ROLE] + [m for m in PAPER_ORDER if m in installed] + [m for m in installed if m not in PAPER_ORDER]


def run_comparison(run: Run, *, methods: Sequence[str] | None = None,
                   explicit_overrides: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    methods = list(methods or default_methods(run))
    for method in methods:
        if method != BASE_ROLE:
            run.registry.get("optimizer", method)  # fail before any work on a typo
    shared = shared_optimizer_options(run, explicit_overrides)

    run.teach()
    trained: list[str] = []
    for method in [m for m in methods if m != BASE_ROLE]:
        section = run.optimizer_section(method, shared)
        if method == "dpo" and "sft" in methods and "init_adapter" in _fields(run, method) and \
                not section.get("init_adapter"):
            section = {**section, "init_adapter": str(run.student_dir("sft") / "adapter")}
        if method == "dpo" and "sft" in methods and "sft" not in trained:
            run.train(section=run.optimizer_section("sft", shared))
            trained.append("sft")
        if method not in trained:
            run.train(section=section)
            trained.append(method)
    roles = [m for m in methods if m == BASE_ROLE or m in trained]
    all_metrics = run.evaluate(roles)
    selected = {role: all_metrics[role] for role in roles_in_order(all_metrics) if role in [*roles, "teacher"]}
    write_comparison(run, selected)
    return selected


def shared_optimizer_options(run: Run, explicit_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Options every optimizer of the grid shares: what the run's optimizer section sets away from
    its component's defaults (config file, demo sizing), and every ``optimizer.*`` override."""
    section = run.config["optimizer"]
    defaults = {name: default for name, _, default, _ in run.registry.get("optimizer", section["name"]).config_fields()}
    shared = {k: v for k, v in section.items() if k != "name" and k in defaults and v != defaults[k]}
    shared.update(parse_overrides(list(explicit_overrides)).get("optimizer") or {})
    shared.pop("name", None)
    return shared


def _fields(run: Run, optimizer: str) -> set[str]:
    return {name for name, *_ in run.registry.get("optimizer", optimizer).config_fields()}


def write_comparison(run: Run, metrics: dict[str, dict[str, Any]]) -> None:
    config = run.config
    header = (f"# MINT comparison: task `{config['task']['name']}`, teacher `{config['teacher']['name']}`, "
              f"student `{config['student']['name']}`, seed {config['seed']}\n\n")
    io.write_text(run.run_dir / "comparison.md", header + markdown_table(metrics) + "\n")
    io.write_json(run.run_dir / "comparison.json", metrics)
    plot_comparison(metrics, run.run_dir / "comparison.png")


def plot_comparison(metrics: dict[str, dict[str, Any]], path) -> None:
    """Bar chart of top-1 and the largest top-k per method, the teacher as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = [r for r in metrics if r != "teacher"]
    topk_keys = sorted({k for m in metrics.values() for k in m if k.startswith("top") and k[3:].isdigit()},
                       key=lambda k: int(k[3:]))
    keys = [topk_keys[0], topk_keys[-1]] if len(topk_keys) > 1 else topk_keys
    fig, ax = plt.subplots(figsize=(1.4 * max(len(roles), 3) + 2, 4))
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        values = [metrics[r].get(key, 0.0) or 0.0 for r in roles]
        bars = ax.bar([x + i * width for x in range(len(roles))], values, width, label=key)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        teacher = metrics.get("teacher", {}).get(key)
        if teacher is not None:
            ax.axhline(teacher, linestyle="--", linewidth=1, color=bars.patches[0].get_facecolor(),
                       label=f"teacher {key}")
    ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(roles))], roles)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (test split)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
