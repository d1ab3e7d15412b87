"""The offline default: an Mllama whose language model is a pretrained Llama text model (SmolLM2-135M).

**How it is built.** :func:`build_from_text` takes a Llama-architecture causal LM folder (the
default is SmolLM2-135M-Instruct, resolved offline exactly as the text student resolves it:
:func:`mint_llama.resolve.resolve_model`) and writes an ``MllamaForConditionalGeneration``
checkpoint (safetensors + ``MllamaProcessor``), so the student loads it through the same code
path as ``meta-llama/Llama-3.2-11B-Vision-Instruct``:

- the language model is the text model's layers, copied weight for weight, with gated
  cross-attention layers inserted after the text layers listed in ``cross_after`` (Mllama's own
  layer type; random init except zero output projections behind open tanh gates, so before
  training the student *is* the text model, same logits, checked in the tests, while gradients
  reach the new layer from the first step);
- a small Mllama vision tower (random init, one 64x64 tile, 8x8 patches) and the multimodal
  projector into the text hidden size;
- the text model's tokenizer plus one ``<|image|>`` token (id = the text vocabulary size; one more
  output row, zero, and suppressed in generation, so losses over prompt tokens can read it), and a ChatML template that
  turns ``{"type": "image"}`` content into ``<|image|>`` (SmolLM2-Instruct speaks ChatML).

**What trains** (see :data:`FULL_TRAIN` and the sweep in the package README section): LoRA on the
language model's self-attention layers, plus full training of the new parts — cross-attention
layers, projector and vision tower — through peft's ``modules_to_save`` (so "adapter off", the DPO
reference, is the untrained model, and the adapter folder holds everything that changed).

**What it can and cannot learn.** The language model is pretrained: it reads the prompt, follows
"choose from ..." and writes the numbered list from the start. The vision side starts from
nothing: it learns only the image features that separate the training tiles' labels in MINT's
preference data (stain, nucleus density and size, arrangement, as far as 64x64 pixels and a few
hundred updates show them). It is no pathologist; the paper's 11B model on a GPU is.

The build is cached under ``$MINT_CACHE/models/<text name>-vision-<hash>/`` (the hash covers the
recipe and the text weights' file size and mtime), built in a temporary folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from mint_llama.resolve import SMOLLM2_ID, mint_cache_dir, resolve_model

#: Bump when the recipe changes in a way the spec's hash would not see.
RECIPE_VERSION = 3
TILE_SIZE = 64
IMAGE = "<|image|>"

#: ChatML (SmolLM2-Instruct's format) with image content; no default system prompt (shorter prompts).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_global_layers=1, attention_heads=4,
              image_size=TILE_SIZE, patch_size=8, max_num_tiles=1, supported_aspect_ratios=[[1, 1]],
              intermediate_layers_indices=[1], vision_output_dim=128, initializer_range=0.02)
#: Text layers (0-based, of the text model) after which a cross-attention layer is inserted.
CROSS_AFTER = (27,)


def recipe(cross_after=CROSS_AFTER, vision=None) -> dict:
    return {"version": RECIPE_VERSION, "vision": dict(vision or VISION), "cross_after": list(cross_after),
            "template": CHAT_TEMPLATE, "image_token": IMAGE, "tile": TILE_SIZE, "seed": 0}


def _text_stamp(text_dir: Path) -> str:
    weights = sorted(text_dir.glob("*.safetensors"))
    return json.dumps([[p.name, p.stat().st_size] for p in weights])


def built_dir(text_dir: Path, rec: dict, cache_root: Path | None = None, name: str | None = None) -> Path:
    name = name or text_dir.name
    key = json.dumps({"recipe": rec, "text": _text_stamp(text_dir), "name": name}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return (cache_root or mint_cache_dir()) / "models" / f"{name}-vision-{digest}"


def _layer_plan(n_text: int, cross_after) -> tuple[list[int], dict[int, int]]:
    """Mllama's ``cross_attention_layers`` and {mllama layer index: text layer index} for the rest."""
    cross, mapping, index = [], {}, 0
    for text_layer in range(n_text):
        mapping[index] = text_layer
        index += 1
        if text_layer in cross_after:
            cross.append(index)
            index += 1
    return cross, mapping


def build_processor(text_dir: Path):
    from tokenizers import AddedToken
    from transformers import AutoTokenizer, MllamaImageProcessor, MllamaProcessor

    tokenizer = AutoTokenizer.from_pretrained(text_dir, trust_remote_code=False)
    tokenizer.add_tokens([AddedToken(IMAGE, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None:
        # MllamaProcessor prepends bos_token to texts lacking it; with ChatML every prompt opens with
        # <|im_start|>, which is SmolLM2's own bos_token too.
        tokenizer.bos_token = "<|im_start|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = MllamaImageProcessor(size={"height": TILE_SIZE, "width": TILE_SIZE}, max_image_tiles=1)
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_from_text(text_dir: str | Path, directory: str | Path, *, cross_after=CROSS_AFTER, vision=None) -> Path:
    """Write the Mllama built from the Llama folder ``text_dir`` into ``directory``; return it."""
    import torch
    from transformers import AutoModelForCausalLM, MllamaConfig, MllamaForConditionalGeneration

    text_dir, directory = Path(text_dir), Path(directory)
    processor = build_processor(text_dir)
    tok = processor.tokenizer
    text = AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32, use_safetensors=True,
                                                trust_remote_code=False)
    tc = text.config
    if tc.model_type != "llama":
        raise ValueError(f"{text_dir}: a Llama-architecture model is needed, got model_type={tc.model_type!r}")
    image_id = tok.convert_tokens_to_ids(IMAGE)
    if image_id != tc.vocab_size:
        raise ValueError(f"{text_dir}: the tokenizer has {len(tok)} tokens for a {tc.vocab_size}-row embedding; "
                         "<|image|> must come right after the text vocabulary")
    cross, mapping = _layer_plan(tc.num_hidden_layers, set(cross_after))
    eos = sorted({tok.eos_token_id, *([tc.eos_token_id] if isinstance(tc.eos_token_id, int) else tc.eos_token_id or [])})
    # <|image|> is inside the output vocabulary (unlike Llama 3.2 Vision's), so a loss over prompt
    # tokens can read its log-probability; its output row is zero and generation suppresses it.
    text_config = dict(vocab_size=tc.vocab_size + 1, hidden_size=tc.hidden_size, intermediate_size=tc.intermediate_size,
                       num_hidden_layers=tc.num_hidden_layers + len(cross), num_attention_heads=tc.num_attention_heads,
                       num_key_value_heads=tc.num_key_value_heads, hidden_act=tc.hidden_act,
                       max_position_embeddings=tc.max_position_embeddings, rms_norm_eps=tc.rms_norm_eps,
                       rope_parameters=dict(tc.rope_parameters), cross_attention_layers=cross,
                       initializer_range=tc.initializer_range, tie_word_embeddings=False,
                       eos_token_id=eos, pad_token_id=tok.pad_token_id)
    if tok.bos_token_id is not None:  # ChatML tokenizers may have none
        text_config["bos_token_id"] = tok.bos_token_id
    config = MllamaConfig(vision_config=dict(vision or VISION), text_config=text_config, image_token_index=image_id)
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = MllamaForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(rng_state)  # leave the caller's seeded stream alone
    source = text.state_dict()
    lm = model.model.language_model
    with torch.no_grad():
        lm.embed_tokens.weight[:tc.vocab_size].copy_(source["model.embed_tokens.weight"])
        lm.norm.weight.copy_(source["model.norm.weight"])
        model.lm_head.weight[:tc.vocab_size].copy_(source.get("lm_head.weight", source["model.embed_tokens.weight"]))
        model.lm_head.weight[tc.vocab_size:].zero_()
        for index, text_layer in mapping.items():
            prefix = f"model.layers.{text_layer}."
            layer_state = {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}
            lm.layers[index].load_state_dict(layer_state, strict=True)  # same module names as Llama's
        for index in cross:
            # Identity at init with the gradient path open: open gates (tanh(1) = 0.76) and zero
            # output projections, as LoRA zeroes B. Zero *gates* (Mllama's init) were measured to
            # hide the image: the gate gets ~lr per step, so after 40 ORPO steps it is still ~0.04
            # and every tile got the same answer (generation top-1 0.125 = chance).
            layer = lm.layers[index]
            layer.cross_attn_attn_gate.fill_(1.0)
            layer.cross_attn_mlp_gate.fill_(1.0)
            layer.cross_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    generation = model.generation_config
    generation.pad_token_id, generation.eos_token_id = tok.pad_token_id, eos
    if tok.bos_token_id is not None:
        generation.bos_token_id = tok.bos_token_id
    generation.do_sample = False
    generation.suppress_tokens = [image_id]
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    meta = {"recipe": recipe(cross_after, vision), "text_model": str(text_dir), "cross_attention_layers": cross}
    (directory / "mint_recipe.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return directory


def ensure_from_text(text_dir: str | Path, *, cache_root: str | Path | None = None, cross_after=CROSS_AFTER,
                     vision=None, name: str | None = None, log: Callable[[str], None] = print) -> Path:
    """The cached build for ``text_dir``, built on first use (atomic: temp folder, then rename).

    ``name`` (default: the folder's name) names the cache folder, ``<name>-vision-<hash>``.
    """
    text_dir = Path(text_dir)
    target = built_dir(text_dir, recipe(cross_after, vision), Path(cache_root) if cache_root else None, name)
    if (target / "mint_recipe.json").exists():
        return target
    log(f"Building the vision student from {text_dir} (one time) into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_from_text(text_dir, tmp, cross_after=cross_after, vision=vision)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "mint_recipe.json").exists():  # another process won the race: its copy is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_default(log: Callable[[str], None] = print) -> Path:
    """SmolLM2-135M-Instruct resolved like the text student's default, then built (cached)."""
    resolved = resolve_model(SMOLLM2_ID, log=log)
    return ensure_from_text(resolved.path, name=SMOLLM2_ID.split("/")[-1], log=log)
