"""Test utility: a tiny random Llama with a real tokenizer, built offline in well under a second.

Every MINT test that needs a text student points ``student.model`` at the folder this writes::

    from mint_llama.testing import build_tiny_llama
    model_dir = build_tiny_llama(tmp_path / "tiny")      # then student.model=str(model_dir)

The tokenizer is a byte-level BPE trained on the fly on a small medical-ish corpus (so disease
names and numbered lists tokenize into a handful of pieces), wrapped in a
``PreTrainedTokenizerFast`` with ChatML special tokens and chat template, the same layout as
SmolLM2-Instruct. Weights are random but deterministic for a given ``seed``.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

_CORPUS = """
Most likely diagnoses:
1. Marfan syndrome
2. Loeys-Dietz syndrome
3. Ehlers-Danlos syndrome
4. Noonan syndrome
5. Williams syndrome
6. Down syndrome
7. Cornelia de Lange syndrome
8. Kabuki syndrome
9. Angelman syndrome
10. Prader-Willi syndrome
Most likely diseases:
Most likely tissue types:
1. adipose tissue
2. background
3. debris
4. lymphocytes
5. mucus
6. smooth muscle
7. normal colon mucosa
8. cancer-associated stroma
9. colorectal adenocarcinoma epithelium
The patient is a 7-year-old boy with short stature, intellectual disability, hypotonia and seizures.
A 34-year-old woman presents with tall stature, arachnodactyly, lens dislocation and aortic dilatation.
Clinical notes: global developmental delay; microcephaly; cleft palate; hearing loss; scoliosis.
Phenotype: HP:0001250, HP:0001263, HP:0000252, HP:0004322 (abnormality of the face and heart).
Question: which diseases best explain these findings? List the 10 most likely, best first.
Answer with a numbered list. You are a careful clinical geneticist.
Histology tile: hematoxylin and eosin stained colon tissue at 20x magnification, 0.5 microns per pixel.
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 20 25 30 40 50 100 ( ) [ ] , . ; : - / ? ! ' " % + = _
"""


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    # Repeat the corpus so pair counts are stable; training stays deterministic (no sampling).
    tokenizer.train_from_iterator(lines * 4, trainer=trainer)
    return tokenizer


def build_tiny_llama(directory: str | Path, *, seed: int = 0, hidden_size: int = 48, num_layers: int = 2,
                     num_heads: int = 4, vocab_size: int = 600) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` plus ChatML tokenizer to ``directory`` and return it.

    The folder loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``
    (safetensors, no remote code), exactly like a downloaded model. Deterministic given ``seed``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=_train_tokenizer(vocab_size), bos_token=None,
                                   eos_token="<|im_end|>", pad_token="<|pad|>", unk_token=None)
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "left"
    fast.model_max_length = 2048

    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=max(1, num_heads // 2), max_position_embeddings=2048,
                         bos_token_id=None, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         tie_word_embeddings=False, initializer_range=0.1, dtype="float32")
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)  # don't disturb the caller's seeded stream
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(directory, safe_serialization=True)
    fast.save_pretrained(directory)
    return directory
