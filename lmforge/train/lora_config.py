"""The LoRA flags a fine-tuning stage's config inherits (`lmforge sft`, `lmforge dpo`), apart from the adapters.

Kept free of torch so that building the command line (`lmforge --help`, `lmforge sft --help`) does not import it:
the parser needs the flags and their validation, never the parametrizations of `lmforge.train.lora`, which apply
these settings to a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from lmforge.config import require

# Names a user gives to --lora-targets -> the matrix inside each block.
TARGETS = {"wq": "attn.wq", "wk": "attn.wk", "wv": "attn.wv", "wo": "attn.wo",
           "w_gate": "mlp.w_gate", "w_up": "mlp.w_up", "w_down": "mlp.w_down"}


@dataclass
class LoRAFields:
    """The LoRA flags a fine-tuning stage's config inherits (`lmforge sft`, `lmforge dpo`)."""

    lora_rank: int = field(default=0, metadata={"help": "train rank-R LoRA adapters instead of every weight (0: "
                                                        "full fine-tuning); the adapters train with AdamW at --lr"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale: the change is alpha / rank * B @ A"})
    lora_targets: list[str] = field(default_factory=lambda: list(TARGETS), metadata={
        "help": f"matrices of every block that get adapters, among {' '.join(TARGETS)}", "metavar": "NAME"})
    lora_special_rows: bool = field(default=True, metadata={
        "help": "with LoRA, also train the embedding and output rows of the special tokens (the chat format's, "
                "which a base model has never seen: frozen, their rows stay what pretraining left)"})
    merge: bool = field(default=False, metadata={"help": "after LoRA training, also write the merged weights as "
                                                         "an ordinary checkpoint in OUT/merged"})

    def check_lora(self) -> None:
        """Refuse bad LoRA values, naming the flag; call from the stage config's __post_init__."""
        require(self, "lora_rank", 0 <= self.lora_rank <= 4096, "must be in [0, 4096]")
        require(self, "lora_alpha", self.lora_alpha > 0, "must be > 0")
        unknown = sorted(set(self.lora_targets) - set(TARGETS))
        require(self, "lora_targets", bool(self.lora_targets) and not unknown,
                f"must name matrices among {', '.join(TARGETS)} (unknown: {unknown})")
        require(self, "merge", not self.merge or self.lora_rank > 0,
                "needs --lora-rank (a full fine-tune's checkpoint is already an ordinary one)")

    def lora_train_config(self, train: Any) -> Any:
        """The stage's TrainConfig for this run: with adapters, AdamW for all of them (Muon's orthogonalised
        steps are meant for full hidden matrices, not rank-R factors); a single process (adapters are not
        sharded)."""
        if not self.lora_rank:
            return train
        require(self, "lora_rank", not train.fsdp, "cannot be combined with --fsdp")
        return replace(train, optimizer="adamw")
