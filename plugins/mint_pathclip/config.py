"""Options of the ``pathclip`` teacher. Light: dataclasses only."""

from __future__ import annotations

from dataclasses import dataclass, field

@dataclass
class PathClipConfig:
    model: str = field(default="", metadata={
        "help": "'' or 'scratch' = train a small CLIP from scratch (offline); else a Hugging Face CLIP id or folder, "
                "e.g. vinid/plip (safetensors weights only)"})
    linear_probe: bool = field(default=False, metadata={
        "help": "train a logistic head on image embeddings (train split) and rank with it instead of zero-shot prompts"})
    finetune: bool = field(default=False, metadata={
        "help": "also fine-tune a pretrained checkpoint contrastively on the train captions (scratch always trains)"})
    templates: str = field(default="", metadata={
        "help": "extra zero-shot prompt templates with {name}, separated by '|' (averaged with the built-in ones)"})
    epochs: int = field(default=40, metadata={"help": "contrastive training epochs (upper bound: early stopping on val)"})
    patience: int = field(default=8, metadata={"help": "epochs without val improvement before stopping"})
    batch_size: int = field(default=32, metadata={"help": "contrastive batch size (image-caption pairs)"})
    lr: float = field(default=0.0, metadata={"help": "learning rate; 0 = 2e-3 from scratch, 1e-5 when fine-tuning"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    max_minutes: float = field(default=3.0, metadata={"help": "stop contrastive training after this long (0 = no limit)"})
    image_size: int = field(default=64, metadata={"help": "scratch: input side in pixels (tiles are resized)"})
    vision_tower: str = field(default="resnet10t", metadata={"help": "scratch: timm image tower (random weights)"})
    vision_width: int = field(default=16, metadata={
        "help": "scratch: ResNet width w (stem w, stages w, 2w, 4w, 8w channels); 0 = the timm model's own"})
    embed_dim: int = field(default=128, metadata={"help": "scratch: joint embedding size"})
    text_width: int = field(default=128, metadata={"help": "scratch: text transformer width"})
    text_layers: int = field(default=2, metadata={"help": "scratch: text transformer layers"})
    context_length: int = field(default=32, metadata={"help": "scratch: caption length in BPE tokens"})
    probe_steps: int = field(default=300, metadata={"help": "linear probe: full-batch optimisation steps"})
    eval_batch_size: int = field(default=128, metadata={"help": "images per batch when ranking"})
    threads: int = field(default=1, metadata={
        "help": "torch CPU threads while training and ranking, restored afterwards (0 = leave torch's setting); "
                "1 is several times faster than 2 on a busy 2-core machine"})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda when available), 'cpu' or 'cuda'"})
