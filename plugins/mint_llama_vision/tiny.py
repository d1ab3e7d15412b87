"""``student.model=tiny``: a tiny, randomly initialised Mllama built once on this machine, for tests.

(The offline default is :mod:`mint_llama_vision.from_text`: a real pretrained language model.)

**How it is built.** :func:`build_tiny_mllama` writes, with ``save_pretrained`` (safetensors), the
same files a hub checkpoint of ``meta-llama/Llama-3.2-11B-Vision-Instruct`` has, so the student
loads it through exactly the same code path:

- ``MllamaForConditionalGeneration`` from an ``MllamaConfig`` with a 2-layer (+1 global) vision
  tower on one 56x56 tile (patch 14, so 16 patches + CLS) and a 3-layer language model whose layer 1
  is a gated cross-attention layer; hidden sizes 32 (vision) and 64 (text). Random init from a fixed
  seed (deterministic). Two deviations from transformers' defaults, both so that the image reaches
  the text at all: (1) the cross-attention tanh gates are 1.0, not 0.0 (a zero gate hides the image,
  and LoRA cannot train a bare gate parameter; the pretrained 11B model has learned, non-zero
  gates); (2) ``initializer_range`` is 0.1, about 1/sqrt(hidden size), instead of 0.02, which is
  sized for 4096-wide layers: at width 64 a 0.02 init shrinks the image signal ~6x per layer and
  LoRA could then learn the answer format but not which image gets which label (measured: with
  0.02 a 30-step fit gives both images the same answer; with 0.1 each image gets its own).
- a byte-level BPE tokenizer trained with the ``tokenizers`` library on a built-in corpus covering
  the tissue labels, the answer format (``Most likely tissue types:`` + numbered list) and the
  prompt wording, plus Llama 3.2 Vision's special tokens (``<|begin_of_text|>``, ``<|image|>``,
  ``<|start_header_id|>``, ``<|end_header_id|>``, ``<|eot_id|>``, ``<|finetune_right_pad_id|>``...)
  and a Llama 3.2 Vision-style chat template (``{"type": "image"}`` content -> ``<|image|>``);
- an ``MllamaImageProcessor`` sized to the tile (56x56, ``max_image_tiles=1``), wrapped with the
  tokenizer in an ``MllamaProcessor``.

**What it can and cannot learn.** With random weights it knows no language and has never seen a
tissue: out of the box it emits garbage. Through LoRA on the language model and the multimodal
projector it can learn the answer format and associations between image features (its random but
fixed vision tower still maps different images to different features) and label names from MINT's
preference data. It cannot recognise histology beyond what the few training images teach it; real
use is the 11B model on a GPU.

The build is cached under ``$MINT_CACHE`` (default ``~/.cache/mint``) ``/models/tiny-mllama-<hash>/``,
where the hash covers the build recipe, so changing the recipe builds a new folder. The folder
is written into a temporary directory and renamed into place, so a killed build leaves nothing
half-written that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from mint_llama.resolve import mint_cache_dir  # $MINT_CACHE or ~/.cache/mint, shared with the text student

#: Bump when the recipe changes in a way the hash of the spec below would not see.
RECIPE_VERSION = 1

TILE_SIZE = 56

#: Llama 3.2 Vision's special tokens, in the order they get ids after the BPE vocabulary.
SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>", "<|image|>",
]
BOS, EOS, EOT, PAD, IMAGE = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<|image|>"

#: A Llama 3.2 Vision-style chat template. Like Meta's, images and a system message cannot be
#: combined (the student folds the system text into the user turn), and ``{"type": "image"}``
#: content becomes ``<|image|>``. The real model's template also adds a dated system header for
#: text-only prompts; that part is left out here.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] | trim }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

_TISSUES = [
    "adipose tissue", "adipose", "background", "debris", "necrosis", "lymphocytes", "immune cells", "mucus",
    "smooth muscle", "normal colon mucosa", "normal mucosal glands", "cancer-associated stroma", "stroma",
    "simple stroma", "complex stroma", "colorectal adenocarcinoma epithelium", "tumor epithelium", "tumor",
    "empty", "mucosa", "lympho", "complex",
]

_CORPUS = [
    "Most likely tissue types:",
    "Most likely labels:",
    "Most likely diagnoses:",
    "Which tissue types best describe this image? List the 3 most likely, best first.",
    "Which tissue type is shown in this H&E stained histology tile? Answer with a numbered list.",
    "Look at the image of a colorectal tissue tile and name the tissue classes, most likely first.",
    "You are an expert pathologist. Answer only with the list.",
    "Hematoxylin and eosin stained colon tissue at 20x magnification, 0.5 microns per pixel.",
    "The tile shows glands, nuclei, fat cells, fibres, mucin, necrotic debris and inflammatory cells.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 ( ) [ ] , . ; : - / ? ! ' \" % + = _ & #",
    "user\n\nassistant\n\nsystem\n\n",
] + [f"{i}. {name}" for i in range(1, 11) for name in _TISSUES] + [name.title() for name in _TISSUES]

_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
               image_size=TILE_SIZE, patch_size=14, max_num_tiles=1, supported_aspect_ratios=[[1, 1]],
               intermediate_layers_indices=[1], vision_output_dim=64, initializer_range=0.1)
_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             cross_attention_layers=[1], max_position_embeddings=2048, initializer_range=0.1, rope_parameters={"rope_type": "default",
                                                                                       "rope_theta": 500000.0})
_BPE_VOCAB = 700


def recipe() -> dict:
    """Everything that determines the built files; its hash names the cache folder."""
    return {"version": RECIPE_VERSION, "vision": _VISION, "text": _TEXT, "bpe_vocab": _BPE_VOCAB,
            "corpus": _CORPUS, "specials": SPECIAL_TOKENS, "template": CHAT_TEMPLATE, "tile": TILE_SIZE, "seed": 0}


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]


def default_tiny_dir(cache_root: str | Path | None = None) -> Path:
    root = Path(cache_root) if cache_root is not None else mint_cache_dir()
    return root / "models" / f"tiny-mllama-{recipe_hash()}"


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # Llama 3 is byte-level BPE too: any text (unseen label names included) still encodes.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=_BPE_VOCAB, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


def build_processor():
    """The tokenizer + image processor pair, as an ``MllamaProcessor``."""
    from transformers import MllamaImageProcessor, MllamaProcessor, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_train_tokenizer(), bos_token=BOS, eos_token=EOT,
                                        pad_token=PAD, unk_token=None, model_max_length=2048)
    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = MllamaImageProcessor(size={"height": TILE_SIZE, "width": TILE_SIZE}, max_image_tiles=1)
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def _build_model(processor):
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    tok = processor.tokenizer
    ids = {token: tok.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text = dict(_TEXT, vocab_size=len(tok), bos_token_id=ids[BOS], eos_token_id=[ids[EOS], ids["<|eom_id|>"], ids[EOT]],
                pad_token_id=ids[PAD])
    config = MllamaConfig(vision_config=dict(_VISION), text_config=text, image_token_index=ids[IMAGE])
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(recipe()["seed"])
        model = MllamaForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(rng_state)  # leave the caller's seeded stream alone
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            if hasattr(layer, "cross_attn_attn_gate"):
                layer.cross_attn_attn_gate.fill_(1.0)
                layer.cross_attn_mlp_gate.fill_(1.0)
    generation = model.generation_config
    generation.bos_token_id, generation.pad_token_id = ids[BOS], ids[PAD]
    generation.eos_token_id = [ids[EOS], ids["<|eom_id|>"], ids[EOT]]
    generation.do_sample = False
    return model


def build_tiny_mllama(directory: str | Path) -> Path:
    """Write the tiny Mllama (model + processor) into ``directory`` (created) and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    processor = build_processor()
    model = _build_model(processor)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    (directory / "mint_recipe.json").write_text(json.dumps(recipe(), indent=1) + "\n", encoding="utf-8")
    return directory


def ensure_tiny_mllama(cache_root: str | Path | None = None) -> Path:
    """The cached tiny model folder, built on first use (atomic: built in a temp dir, then renamed)."""
    target = default_tiny_dir(cache_root)
    if (target / "mint_recipe.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_tiny_mllama(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same build first: its folder is as good as ours.
            if not (target / "mint_recipe.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
