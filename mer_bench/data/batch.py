"""Mini-batches as the models see them: tensors plus lengths, labels and missing masks.

Why: the harness owns batching and corruption, so a model only ever receives a `Batch`,
never a file, a split or a mask generator.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from mer_bench.data.schema import Split, seven_class


@dataclass
class Batch:
    """One batch. Masks are bool (B, L_m): `valid_*` marks real (non-padding) positions;
    `missing_*` marks valid positions the scenario dropped (all False on complete data).

    Text comes as features `text` (B, L_t, D_t) and, when the data has them, as token ids
    `text_ids` (B, L_t) with `text_attn` (B, L_t) the attention mask ([CLS]/[SEP] included).
    A corrupted batch has dropped text features zeroed and dropped ids set to [UNK].

    `text_layers` is None unless a text encoder runs in the loop (`--text-encoder`,
    `mer_bench.textpath`): then it holds every hidden state of the encoder for this batch's
    (corrupted) ids, each (B, L_t, D_t), embeddings first, and `text` is the last of them.
    """

    text: torch.Tensor
    audio: torch.Tensor
    vision: torch.Tensor
    text_len: torch.Tensor
    audio_len: torch.Tensor
    vision_len: torch.Tensor
    valid_text: torch.Tensor
    valid_audio: torch.Tensor
    valid_vision: torch.Tensor
    missing_text: torch.Tensor
    missing_audio: torch.Tensor
    missing_vision: torch.Tensor
    y_reg: torch.Tensor  # (B,) float regression labels
    y3: torch.Tensor  # (B,) long: 0 neg, 1 neu, 2 pos
    y7: torch.Tensor  # (B,) long: 0..6
    index: torch.Tensor  # (B,) long row index in the split
    text_ids: torch.Tensor | None = None
    text_attn: torch.Tensor | None = None
    text_layers: tuple[torch.Tensor, ...] | None = None

    def __len__(self) -> int:
        return int(self.y_reg.shape[0])

    def target(self, task: str) -> torch.Tensor:
        """Class target for a task: `binary` -> y3 (3-way), `seven` -> y7."""
        return self.y3 if task == "binary" else self.y7

    def to(self, device: torch.device | str) -> Batch:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        if self.text_layers is not None:
            moved["text_layers"] = tuple(h.to(device) for h in self.text_layers)
        return replace(self, **moved)

    def with_(self, **changes: torch.Tensor | None) -> Batch:
        """A copy with some fields replaced (tensors are shared, not copied)."""
        return replace(self, **changes)


def _valid(lengths: np.ndarray, t: int) -> np.ndarray:
    return np.arange(t)[None, :] < lengths[:, None]


def make_batch(split: Split, idx: np.ndarray, device: torch.device | str = "cpu") -> Batch:
    """Gather rows `idx` of a split into a complete (uncorrupted) `Batch` on `device`."""
    idx = np.asarray(idx, dtype=np.int64)
    t_len = split.text_lengths[idx]
    a_len = split.audio_lengths[idx]
    v_len = split.vision_lengths[idx]
    lt, la, lv = split.text.shape[1], split.audio.shape[1], split.vision.shape[1]
    y = split.regression_labels[idx]

    def tt(a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    text_ids = text_attn = None
    if split.text_bert is not None:
        text_ids = tt(split.text_bert[idx, 0], torch.long)
        text_attn = tt(split.text_bert[idx, 1], torch.long)
    b = len(idx)
    return Batch(
        text=tt(split.text[idx], torch.float32),
        audio=tt(split.audio[idx], torch.float32),
        vision=tt(split.vision[idx], torch.float32),
        text_len=tt(t_len, torch.long),
        audio_len=tt(a_len, torch.long),
        vision_len=tt(v_len, torch.long),
        valid_text=tt(_valid(t_len, lt)),
        valid_audio=tt(_valid(a_len, la)),
        valid_vision=tt(_valid(v_len, lv)),
        missing_text=torch.zeros(b, lt, dtype=torch.bool, device=device),
        missing_audio=torch.zeros(b, la, dtype=torch.bool, device=device),
        missing_vision=torch.zeros(b, lv, dtype=torch.bool, device=device),
        y_reg=tt(y, torch.float32),
        y3=tt(split.classification_labels[idx], torch.long),
        y7=tt(seven_class(y), torch.long),
        index=tt(idx, torch.long),
        text_ids=text_ids,
        text_attn=text_attn,
    )
