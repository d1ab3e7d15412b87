"""``mint export`` for the text student: the LoRA adapter, or the base model with the adapter merged.

Both are written into a temporary folder beside ``out_dir`` and renamed into place, so a killed
export never leaves a half-written model that a server would load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mint_core.components import StudentModel
from mint_core.io import atomic_dir
from mint_core.registry import MintError

#: Licenses of the models MINT documents, for the model card when the base model's folder has no
#: README front matter saying so (the GGUF-converted SmolLM2 has none). Prefix match on the hub id.
KNOWN_LICENSES = {
    "HuggingFaceTB/SmolLM2-": "apache-2.0",
    "meta-llama/Llama-3.2-": "llama3.2",
    "meta-llama/Llama-3.1-": "llama3.1",
    "Qwen/Qwen2.5-": "apache-2.0",
}


def base_model_license(base_model: str, folder: Path | None) -> str | None:
    """``license`` from the base model folder's README front matter, else from :data:`KNOWN_LICENSES`."""
    readme = folder / "README.md" if folder is not None else None
    if readme is not None and readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            try:
                front = yaml.safe_load(text.split("---", 2)[1]) or {}
            except yaml.YAMLError:
                front = {}
            if isinstance(front, dict) and front.get("license"):
                return str(front["license"])
    return next((lic for prefix, lic in KNOWN_LICENSES.items() if base_model.startswith(prefix)), None)


def export_text_student(sm: StudentModel, *, out_dir: Path, merged: bool) -> dict[str, Any]:
    """Write ``sm`` to ``out_dir`` (see :meth:`StudentModel.export`); returns model-card facts."""
    base = sm.model.get_base_model() if hasattr(sm.model, "get_base_model") else sm.model
    base_folder = Path(base.name_or_path) if base.name_or_path and Path(base.name_or_path).is_dir() else None
    base_model = sm.config.model
    with atomic_dir(out_dir) as tmp:
        if merged:
            _write_merged(sm, tmp)
        else:
            _write_adapter(sm, tmp, base_model=base_model)
        sm.tokenizer.save_pretrained(tmp)
        _ensure_chat_template(sm, tmp)
    return {"base_model": base_model, "license": base_model_license(base_model, base_folder),
            "merged": merged, "end_token": sm.tokenizer.convert_ids_to_tokens(sm.end_token_id)}


def _write_adapter(sm: StudentModel, folder: Path, *, base_model: str) -> None:
    if not hasattr(sm.model, "peft_config"):
        raise MintError("This student has no adapter to export: export the base model with --merged, "
                        "or pick a trained --role")
    sm.model.save_pretrained(folder, safe_serialization=True)
    # peft records the folder the base was loaded from (a cache path on this machine); the card and
    # anyone loading the adapter elsewhere need the model's own name.
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def _write_merged(sm: StudentModel, folder: Path) -> None:
    if getattr(sm.config, "load_in_4bit", False):
        raise MintError("--merged needs full-precision weights: load the student with student.load_in_4bit=false "
                        "to merge (merging into 4-bit weights would round the adapter away)")
    model = sm.model.merge_and_unload() if hasattr(sm.model, "merge_and_unload") else sm.model
    sm.model = model  # the peft wrapper is gone: later calls use the merged model
    generation = model.generation_config
    # Plain `generate` must stop where MINT stops: on the chat template's end-of-turn token.
    generation.eos_token_id = sm.stop_token_ids if len(sm.stop_token_ids) > 1 else sm.stop_token_ids[0]
    generation.pad_token_id = sm.pad_token_id
    generation.do_sample = False
    for sampling in ("temperature", "top_p", "top_k"):  # greedy: sampling knobs would only warn
        if hasattr(generation, sampling):
            setattr(generation, sampling, None)
    model.save_pretrained(folder, safe_serialization=True)


def _ensure_chat_template(sm: StudentModel, folder: Path) -> None:
    """Servers read the chat template from the folder: make sure one was written."""
    if not sm.tokenizer.chat_template:
        return
    if not (folder / "chat_template.jinja").exists() and "chat_template" not in _tokenizer_config(folder):
        (folder / "chat_template.jinja").write_text(sm.tokenizer.chat_template, encoding="utf-8")


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    path = folder / "tokenizer_config.json"
    return json.loads(path.read_text()) if path.exists() else {}
