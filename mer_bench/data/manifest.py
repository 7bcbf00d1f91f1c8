"""Published SHA-256 checksums of the MMSA feature files, for `mer-bench data verify`.

Source: the "SHA-256 for feature files" block of thuiar/MMSA's README.md (v2 branch; the same
values are quoted by other projects that mirror these files). Keys are the MMSA-relative paths;
`CMU-MOSI/...` and `CMU-MOSEI/...` layouts map to the same entries. No value here was computed
by this project; CIDer's OOD and CASP's cross-dataset pickles have no published checksums.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MMSA_SHA256: dict[str, str] = {
    "MOSI/Processed/unaligned_50.pkl": "78e0f8b5ef8ff71558e7307848fc1fa929ecb078203f565ab22b9daab2e02524",
    "MOSI/Processed/aligned_50.pkl": "d3994fd25681f9c7ad6e9c6596a6fe9b4beb85ff7d478ba978b124139002e5f9",
    "MOSEI/Processed/unaligned_50.pkl": "ad8b23d50557045e7d47959ce6c5b955d8d983f2979c7d9b7b9226f6dd6fec1f",
    "MOSEI/Processed/aligned_50.pkl": "45eccfb748a87c80ecab9bfac29582e7b1466bf6605ff29d3b338a75120bf791",
    "SIMS/Processed/unaligned_39.pkl": "c9e20c13ec0454d98bb9c1e520e490c75146bfa2dfeeea78d84de047dbdd442f",
}

# Standard split sizes (train, valid, test) of the MMSA releases.
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "mosi": {"train": 1284, "valid": 229, "test": 686},
    "mosei": {"train": 16326, "valid": 1871, "test": 4659},
}


def manifest_key(path: str | os.PathLike) -> str | None:
    """'…/CMU-MOSI/Processed/aligned_50.pkl' -> 'MOSI/Processed/aligned_50.pkl' (or None)."""
    parts = Path(path).parts
    if len(parts) < 3 or parts[-2] != "Processed":
        return None
    ds = parts[-3].upper().removeprefix("CMU-")
    key = f"{ds}/Processed/{parts[-1]}"
    return key if key in MMSA_SHA256 else None


def dataset_of(path: str | os.PathLike) -> str | None:
    """'mosi' / 'mosei' when the path follows the MMSA or CIDer layout, else None."""
    for part in reversed(Path(path).parts[:-1]):
        up = part.upper().removeprefix("CMU-").removeprefix("OOD_")
        if up in ("MOSI", "MOSEI"):
            return up.lower()
    return None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
