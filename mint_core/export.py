"""``mint export``: a run's student as Hugging Face folders, its preference data as TRL datasets.

    export_model          the LoRA adapter, or the merged model (``merged=True``), plus README.md
    export_preferences    preferences.jsonl in TRL's conversational format
    model_card            the README.md: YAML front matter + how the model was made and how well it does

The model work (saving, merging) is the student's (``StudentModel.export``); this module only
decides what goes where and writes the card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mint_core import io
from mint_core.predict import BASE_ROLE, open_run, trained_adapter
from mint_core.registry import MintError
from mint_core.types import PreferenceExample, Prompt


# -- models --------------------------------------------------------------------------------------
def export_model(run_dir: str | Path, *, role: str, out_dir: str | Path, merged: bool = False,
                 console: Any = None) -> Path:
    """Write ``role``'s adapter (or the merged model) and a model card to ``out_dir``; returns it."""
    run = open_run(run_dir, console=console)
    adapter_dir, _ = trained_adapter(run, role)
    if adapter_dir is None and not merged:
        why = "the base student has no adapter" if role == BASE_ROLE else f"{role!r} changes no weights"
        raise MintError(f"Nothing to export for --role {role}: {why}. Use --merged to write the full model.")
    out_dir = Path(out_dir)
    model = run.component("student").load(ctx=run.ctx, adapter_dir=adapter_dir, trainable=False)
    facts = model.export(out_dir=out_dir, merged=merged)
    io.write_text(out_dir / "README.md", model_card(run, role=role, facts=facts, merged=merged))
    return out_dir


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not Path(name).expanduser().exists() and not name.startswith((".", "/", "~"))


def _metric_cell(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    if not isinstance(value, (int, float)):
        return "—"
    interval = metrics.get(f"{key}_ci")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
    return f"{value:.3f}"


def _metrics_section(all_metrics: dict[str, dict[str, Any]], role: str) -> list[str]:
    from mint_core.report import metric_columns, roles_in_order

    shown = {r: m for r, m in all_metrics.items() if r in {role, BASE_ROLE, "teacher"}}
    if role not in shown:
        return ["Not evaluated yet: run `mint eval --roles base," + role + "` to fill this section.", ""]
    columns = metric_columns(shown)
    # eval.constrained's keys (c_top1, ...) beside the free-generation ones they mirror.
    columns += [f"c_{c}" for c in columns if any(f"c_{c}" in m for m in shown.values())]
    has_ci = any(k.endswith("_ci") for m in shown.values() for k in m)
    # One row per metric, one column per model: the card stays readable however many metrics there are.
    models = roles_in_order(shown)
    labels = [{"teacher": "teacher (multimodal, reference)", BASE_ROLE: "base student"}.get(name, f"**{name}** (this model)")
              for name in models]
    lines = ["| metric | " + " | ".join(labels) + " |", "|---" * (len(models) + 1) + "|"]
    for column in columns:
        lines.append(f"| {column} | " + " | ".join(_metric_cell(shown[name], column) for name in models) + " |")
    n = shown[role].get("n")
    constrained = any(c.startswith("c_") for c in columns)
    lines += ["", f"On the run's test split ({n} cases)" + (", 95% bootstrap intervals in brackets." if has_ci else
              "; no intervals were computed for this run (see `metrics.json`)."),
              "`top{k}`: the true label among the first k names written; `rank_*`: labels ranked by "
              "log-likelihood; `well_formed`: answers in the exact format; `hallucination_rate`: listed names "
              "matching no label; `teacher_*`: agreement with the teacher"
              + ("; `c_*`: generation constrained to the label names." if constrained else "."), ""]
    return lines


def _example_messages(run: Any) -> list[dict[str, Any]]:
    """The chat messages the student was trained on, for a placeholder case (the prompt format matters)."""
    from mint_core.types import Case

    task = run.component("task")
    try:
        prompt = task.prompt(case=Case(id="example", label_ids=(), text="<the case's notes>"), n_answers=run.n_answers())
    except (ValueError, KeyError, TypeError):  # a task that needs more than notes (an image) to build a prompt
        return [{"role": "user", "content": "<the task's prompt>"}]
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return messages + [{"role": "user", "content": prompt.text}]


def model_card(run: Any, *, role: str, facts: dict[str, Any], merged: bool) -> str:
    """The Hugging Face model card (README.md) for ``role`` of ``run``."""
    config = run.config
    base_model = str(facts.get("base_model") or config["student"].get("model") or "")
    task, teacher = config["task"]["name"], config["teacher"]["name"]
    front: dict[str, Any] = {}
    if base_model and _looks_like_hub_id(base_model):
        front["base_model"] = base_model
    front["library_name"] = "transformers" if merged else "peft"
    if facts.get("license"):
        front["license"] = facts["license"]
    front["tags"] = ["mint", "preference-optimization", role, task, f"teacher-{teacher}", "medical", "research-only"]
    if not merged:
        front["tags"].insert(2, "lora")
    front["pipeline_tag"] = "text-generation"

    run_dir = run.run_dir
    task_info = io.read_json(run_dir / "task.json").get("info", {}) if (run_dir / "task.json").exists() else {}
    split = io.read_json(run_dir / "split.json") if (run_dir / "split.json").exists() else {}
    prefs = io.read_json(run_dir / "prefs_summary.json") if (run_dir / "prefs_summary.json").exists() else {}
    result_path = run.student_dir(role) / "result.json"
    result = io.read_json(result_path) if result_path.exists() else {}
    metrics = io.read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
    labels = io.read_json(run_dir / "labels.json") if (run_dir / "labels.json").exists() else []
    noun = getattr(type(run.component("task")), "label_noun", "labels")

    parts = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {config['name']}: {role} student" + (" (merged)" if merged else " (LoRA adapter)"), "",
             f"A unimodal student LLM aligned with MINT (Multimodal INtegrated knowledge Transfer) by **{role}** on the rankings of a "
             f"multimodal teacher (`{teacher}`), for the `{task}` task: from the student's view of a case alone it "
             f"writes the most likely {noun} as a numbered list.", "",
             f"- Base model: `{base_model}`", "- Format: " + (
                 "the base model with the LoRA adapter merged in (safetensors)" if merged else
                 "a LoRA adapter (peft, safetensors) for the base model"),
             f"- Label space: {len(labels)} {noun}", f"- Seed: {config['seed']}", "",
             "## Intended use and limits", "",
             "**Research use only. This is not a medical device** and must not be used to diagnose, treat or "
             "triage patients. It was aligned on "
             + ("simulated patients" if task_info.get("simulated") else "the data summarised below")
             + f" and answers only within its {len(labels)} {noun}: a case outside that label space still gets "
             "one of them. Its answers inherit the teacher's errors and biases, and the test figures below come "
             "from the same distribution it was trained on; they say nothing about other populations, "
             "note-writing styles or languages.", "",
             "## How to use", "", "```python"]
    if merged:
        parts += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  'model = AutoModelForCausalLM.from_pretrained("DIR")', 'tokenizer = AutoTokenizer.from_pretrained("DIR")']
    else:
        parts += ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer",
                  'model = AutoPeftModelForCausalLM.from_pretrained("DIR")', 'tokenizer = AutoTokenizer.from_pretrained("DIR")']
    parts += [f"messages = {json.dumps(_example_messages(run))}",
              "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt', return_dict=True)",
              "answer = model.generate(**inputs, max_new_tokens=160, do_sample=False)",
              'print(tokenizer.decode(answer[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))', "```", "",
              f"Or with MINT: `mint predict --run-dir RUN --role {role} notes.txt` (the label ranking too, and "
              f"`--constrained` answers that contain only label names).", "",
              "## Evaluation", ""]
    parts += _metrics_section(metrics, role)
    parts += ["## Training data", ""]
    if task_info:
        facts_line = {k: v for k, v in task_info.items() if isinstance(v, (str, int, float, bool)) and k != "path"}
        parts.append("- Task data: " + ", ".join(f"{k} {v}" for k, v in facts_line.items()))
    if split:
        parts.append("- Splits: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    for builder, summary in prefs.items():
        parts.append(f"- Preference data (`{builder}`): " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    if result.get("metrics"):
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result["metrics"].items()}
        parts.append(f"- Training ({role}): " + ", ".join(f"{k} {v}" for k, v in shown.items())
                     + (f"; {result['seconds']} s" if result.get("seconds") else ""))
    parts += ["", "## Run configuration", "", "```yaml", yaml.safe_dump(config, sort_keys=False).strip(), "```", ""]
    env_path = run_dir / "env.json"
    if env_path.exists():
        packages = io.read_json(env_path).get("packages", {})
        parts += ["Software: " + ", ".join(f"{k} {v}" for k, v in packages.items() if v), ""]
    return "\n".join(parts)


# -- preference data -----------------------------------------------------------------------------
def conversational_prompt(prompt: Prompt, *, base: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """TRL's prompt message list for ``prompt`` and its image paths (vision prompts: an image part first)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": prompt.system}] if prompt.system else []
    if prompt.image:
        image = Path(prompt.image)
        image = image if image.is_absolute() else base / image
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.text}]})
        return messages, [str(image.resolve())]
    messages.append({"role": "user", "content": prompt.text})
    return messages, []


def trl_row(example: PreferenceExample, *, base: Path) -> dict[str, Any]:
    """One example in TRL's conversational format: prompt/chosen/rejected, prompt/completion/label (KTO), prompt/completion."""
    prompt, images = conversational_prompt(example.prompt, base=base)
    row: dict[str, Any] = {"prompt": prompt}
    if example.kind == "pair":
        row["chosen"] = [{"role": "assistant", "content": example.chosen}]
        row["rejected"] = [{"role": "assistant", "content": example.rejected}]
    else:
        row["completion"] = [{"role": "assistant", "content": example.completion}]
        if example.kind == "unpaired":
            row["label"] = bool(example.label)
    if images:
        row["images"] = images
    return row


def export_preferences(run_dir: str | Path, *, out_dir: str | Path, builder: str | None = None) -> Path:
    """The run's preference examples (the run's builder, or ``builder``) as ``out_dir/preferences.jsonl``.

    Every row has the same keys, so ``datasets.load_dataset("json", data_files=...)`` reads the file
    and TRL's DPO/ORPO (pairs), KTO (unpaired) or SFT trainers take it as it is.
    """
    run = open_run(run_dir)
    name = builder or run.config["builder"]["name"]
    path = run.preferences_path(name)
    if not path.exists():
        raise MintError(f"{path} is missing: run 'mint prefs --run-dir {run.run_dir}"
                        + (f" --builder {name}'" if builder else "'") + " first.")
    examples = [PreferenceExample.from_dict(row) for row in io.read_jsonl(path)]
    kinds = {e.kind for e in examples}
    if len(kinds) > 1:
        raise MintError(f"{path} mixes example kinds {sorted(kinds)}: TRL datasets hold one kind")
    out = Path(out_dir) / "preferences.jsonl"
    count = io.write_jsonl(out, (trl_row(e, base=run.run_dir) for e in examples))
    io.write_json(Path(out_dir) / "preferences.info.json", {
        "source": str(path), "builder": name, "kind": next(iter(kinds), None), "rows": count,
        "format": "TRL conversational: prompt + chosen/rejected (pairs), completion/label (KTO), completion (SFT)"})
    return out


__all__ = ["conversational_prompt", "export_model", "export_preferences", "model_card", "trl_row"]
