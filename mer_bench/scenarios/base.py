"""Contracts of the scenario layer: lengths in, drop masks out, applied by the harness.

A *mode* (rmfm, trmfm, rmm, tmfm, stmfm, smm) is a pure function
`(lengths, rate, rngs) -> Drops`; a *scenario* is a mode crossed with a distribution
(iid, ood, cross) plus its test grid and version. Models never see any of this.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mer_bench.data.batch import Batch
from mer_bench.data.schema import MASK_ID, UNK_ID
from mer_bench.registry import Registry

# modality -> bool array (B, L_m); True marks a valid position that is dropped.
Drops = dict[str, np.ndarray]
Rate = float | tuple[float, float, float]


@dataclass(frozen=True)
class Lengths:
    """Valid lengths of one batch and the padded sizes; text lengths include [CLS]/[SEP]."""

    text: np.ndarray
    audio: np.ndarray
    vision: np.ndarray
    sizes: tuple[int, int, int]  # (L_t, L_a, L_v)
    text_specials: bool = True  # [CLS] at 0 and [SEP] at len-1 are never dropped

    def __len__(self) -> int:
        return int(self.text.shape[0])

    def of(self, modality: str) -> np.ndarray:
        return {"text": self.text, "audio": self.audio, "vision": self.vision}[modality]

    def droppable(self, modality: str) -> np.ndarray:
        """(B, L_m) bool: positions a scenario may drop (padding and [CLS]/[SEP] excluded)."""
        size = self.sizes[("text", "audio", "vision").index(modality)]
        pos = np.arange(size)[None, :]
        length = self.of(modality)[:, None]
        ok = pos < length
        if modality == "text" and self.text_specials:
            ok &= (pos > 0) & (pos < length - 1)
        return ok

    @classmethod
    def from_batch(cls, batch: Batch) -> Lengths:
        return cls(
            text=batch.text_len.cpu().numpy(),
            audio=batch.audio_len.cpu().numpy(),
            vision=batch.vision_len.cpu().numpy(),
            sizes=(batch.text.shape[1], batch.audio.shape[1], batch.vision.shape[1]),
            text_specials=batch.text_ids is not None,
        )


ModeFn = Callable[[Lengths, Rate, Sequence[np.random.Generator]], Drops]


@dataclass(frozen=True)
class Mode:
    """A registered missing mode: its mask function and what it requires."""

    name: str
    fn: ModeFn
    definition: str
    requires_aligned: bool = False
    version: str = "1"


MODES: Registry[Mode] = Registry("missing mode")


def register_mode(
    name: str, definition: str, requires_aligned: bool = False, version: str = "1"
) -> Callable[[ModeFn], ModeFn]:
    """Decorator: register a mask function as a missing mode."""

    def deco(fn: ModeFn) -> ModeFn:
        MODES.register(name, Mode(name, fn, definition, requires_aligned, version))
        return fn

    return deco


def apply_drops(batch: Batch, drops: Drops) -> Batch:
    """Corrupt a batch: dropped text ids -> [UNK] and text features -> 0; dropped audio and
    vision frames -> 0. Returns a new batch whose `missing_*` masks record the drops."""
    dev = batch.text.device
    d = {m: torch.as_tensor(drops[m], dtype=torch.bool, device=dev) for m in drops}
    changes: dict[str, torch.Tensor | None] = {}
    for m in ("text", "audio", "vision"):
        if m not in d:
            continue
        x = getattr(batch, m)
        changes[m] = x.masked_fill(d[m].unsqueeze(-1), 0.0)
        changes[f"missing_{m}"] = d[m] & getattr(batch, f"valid_{m}")
    if "text" in d and batch.text_ids is not None:
        changes["text_ids"] = batch.text_ids.masked_fill(d["text"], UNK_ID)
    return batch.with_(**changes)


def counterfactual_text(
    batch: Batch, keep_ids: torch.Tensor, mask_feature: torch.Tensor | None = None
) -> Batch:
    """MACI's counterfactual view of an (already corrupted) batch: keep special tokens,
    missing-token [UNK]s and the bias words `keep_ids`; every other valid token becomes
    [MASK] (id 103), or, for fixed text features, the [MASK] feature (zeros if unknown).
    Audio and vision are left as they are."""
    if batch.text_ids is None:
        raise ValueError("counterfactual text needs token ids")
    ids = batch.text_ids
    special = (ids == 0) | (ids == 100) | (ids == 101) | (ids == 102) | (ids == MASK_ID)
    keep = special | torch.isin(ids, keep_ids.to(ids.device))
    replace = ~keep & batch.valid_text
    text = batch.text.clone()
    fill = (
        mask_feature.to(text.device, text.dtype)
        if mask_feature is not None
        else torch.zeros(text.shape[-1], dtype=text.dtype, device=text.device)
    )
    text[replace] = fill
    return batch.with_(text_ids=ids.masked_fill(replace, MASK_ID), text=text)


def sample_rngs(seed: int, stream: str, ids: Sequence[str]) -> list[np.random.Generator]:
    """One local generator per sample, keyed by (seed, stream, sample id) through a stable hash.

    Why: a sample's mask must not depend on batch composition, order or worker count, and
    the global RNG is never touched. Re-creating the generators for another rate replays the
    same uniforms, which is what makes masks nested across rates.
    """
    out = []
    for sid in ids:
        digest = hashlib.blake2b(f"{seed}|{stream}|{sid}".encode(), digest_size=16).digest()
        out.append(np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little"))))
    return out


@dataclass(frozen=True)
class GridPoint:
    """One test condition: a missing rate, or (SMM) a named presence pattern."""

    label: str  # str(float(rate)) for rates ("0.3"), the kept modalities for SMM ("LA")
    rate: Rate


def rate_point(r: float) -> GridPoint:
    return GridPoint(str(float(r)), float(r))


DEFAULT_RATES = tuple(round(0.1 * i, 1) for i in range(11))
DISTRIBUTIONS = ("iid", "ood", "cross")


@dataclass(frozen=True)
class Scenario:
    """A missing mode crossed with a distribution, with its default test grid and version."""

    name: str
    mode: Mode
    distribution: str
    grid: tuple[GridPoint, ...]

    @property
    def version(self) -> str:
        return self.mode.version

    @property
    def definition(self) -> str:
        dist = {
            "iid": "standard split",
            "ood": "repartitioned OOD split",
            "cross": "train on one dataset, test on another",
        }[self.distribution]
        return f"{self.mode.definition} ({dist})"

    @property
    def requires_aligned(self) -> bool:
        return self.mode.requires_aligned

    @property
    def numeric(self) -> bool:
        """True when grid points are rates (AUILC applies), False for SMM patterns."""
        return all(isinstance(p.rate, float) for p in self.grid)

    def grid_labels(self) -> list[str]:
        return [p.label for p in self.grid]

    def with_rates(self, rates: Sequence[float]) -> Scenario:
        if not self.numeric:
            from mer_bench.errors import UserError

            raise UserError(f"scenario {self.name} uses presence patterns, not rates")
        return Scenario(self.name, self.mode, self.distribution, tuple(rate_point(r) for r in rates))

    def drops(self, ids: Sequence[str], lengths: Lengths, point: GridPoint, seed: int) -> Drops:
        """Drop masks for a batch at one grid point: a pure function of (seed, mode, point,
        sample ids); the distribution does not change the masks."""
        rngs = sample_rngs(seed, f"test|{self.mode.name}", ids)
        return self.mode.fn(lengths, point.rate, rngs)


# ----------------------------------------------------------------------------- mask helpers
# Shared by the mode modules and the training policies (added by the scenarios helper).
MODALITY_ORDER = ("text", "audio", "vision")


def check_rate(rate: object, what: str = "missing rate") -> float:
    """A scalar rate as a float in [0, 1]; anything else is a one-line `UserError`."""
    from mer_bench.errors import UserError

    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise UserError(f"{what} must be a number in [0, 1], got {rate!r}")
    r = float(rate)
    if not 0.0 <= r <= 1.0:
        raise UserError(f"{what} must be in [0, 1], got {r}")
    return r


def rate_triple(rate: Rate) -> tuple[float, float, float]:
    """(text, audio, vision) rates from a scalar (all equal) or a 3-sequence."""
    from mer_bench.errors import UserError

    if isinstance(rate, (tuple, list, np.ndarray)):
        if len(rate) != 3:
            raise UserError(f"a per-modality rate needs 3 values (text, audio, vision), got {rate!r}")
        t, a, v = (check_rate(x) for x in rate)
        return (t, a, v)
    r = check_rate(rate)
    return (r, r, r)


def draw_uniforms(rngs: Sequence[np.random.Generator], n: int) -> np.ndarray:
    """(B, n) float64 uniforms in [0, 1), row i drawn by `rngs[i]` in one call.

    Why one call per sample for the full padded width: a sample's uniforms then depend only
    on its own generator, never on the batch it sits in."""
    out = np.empty((len(rngs), n), dtype=np.float64)
    for i, g in enumerate(rngs):
        g.random(out=out[i])
    return out


def split_modalities(lengths: Lengths, u: np.ndarray) -> dict[str, np.ndarray]:
    """Views of (B, L_t + L_a + L_v) uniforms as text | audio | vision blocks."""
    lt, la, _ = lengths.sizes
    return {"text": u[:, :lt], "audio": u[:, lt : lt + la], "vision": u[:, lt + la :]}


def threshold_drops(
    lengths: Lengths, u: dict[str, np.ndarray], rates: dict[str, float | np.ndarray]
) -> Drops:
    """drop = (u < rate) on droppable positions only. `rates[m]` is a scalar or a (B, 1)
    per-sample array; thresholding fixed uniforms at a higher rate only adds drops (nesting)."""
    return {m: (u[m] < rates[m]) & lengths.droppable(m) for m in MODALITY_ORDER}


def no_drops(lengths: Lengths) -> Drops:
    """All-False masks (complete data) of the batch's padded shapes."""
    b = len(lengths)
    return {m: np.zeros((b, s), dtype=bool) for m, s in zip(MODALITY_ORDER, lengths.sizes)}
