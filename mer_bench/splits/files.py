"""Split files on disk: where they are looked up, how they are written and validated.

Why: the committed splits ship inside the package; splits a user builds must never land there.
Lookup order: an explicit root, then `$MER_BENCH_SPLITS`, then the per-user data directory,
then the shipped splits. Every loaded `ood.json` is checked structurally (one-line error).
"""

from __future__ import annotations

import json
import os
import site
import sys
import sysconfig
import tempfile
from pathlib import Path

from mer_bench.data.schema import SPLITS
from mer_bench.errors import UserError

def write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON next to `path` then rename, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


SHIPPED_SUBDIR = ("share", "mer-bench", "splits")  # where a wheel installs the committed splits


def shipped_dir() -> Path | None:
    """The committed splits: the checkout's `splits/` (source tree or editable install), else
    the copy a wheel installs under `<prefix>/share/mer-bench/splits` (pyproject data-files)."""
    from mer_bench.paths import PROJECT_ROOT

    if (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "splits").is_dir():
        return PROJECT_ROOT / "splits"
    import mer_bench

    # <prefix>/lib/pythonX.Y/site-packages/mer_bench -> <prefix> (covers `pip install --prefix`)
    up = Path(mer_bench.__file__).resolve().parents
    pkg_prefix = str(up[4]) if len(up) > 4 else None
    bases = [sysconfig.get_path("data"), sys.prefix, getattr(site, "USER_BASE", None), pkg_prefix]
    for base in bases:
        if base and Path(base, *SHIPPED_SUBDIR).is_dir():
            return Path(base, *SHIPPED_SUBDIR)
    return None


def user_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where built splits go: `--out`, else `$MER_BENCH_SPLITS`, else the per-user data
    directory (`$XDG_DATA_HOME/mer-bench/splits`, default ~/.local/share). Never the package."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("MER_BENCH_SPLITS")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mer-bench" / "splits"


def search_dirs(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Lookup order for reading: an explicit root alone; else the user location, then shipped."""
    if explicit:
        return [Path(explicit).expanduser()]
    shipped = shipped_dir()
    return [user_dir()] + ([shipped] if shipped is not None else [])


def ood_json_path(dataset: str, task: str, root: str | os.PathLike | None = None) -> Path:
    """The `ood.json` to read: the first of `search_dirs(root)` that has one (else the first
    candidate, so the error names where a built split would be looked up)."""
    rel = Path(dataset) / task / "ood.json"
    dirs = search_dirs(root)
    for d in dirs:
        if (d / rel).is_file():
            return d / rel
    return dirs[0] / rel


def out_json_path(dataset: str, task: str, out: str | os.PathLike | None = None) -> Path:
    """Where `split build` writes: `user_dir(out)`, never inside the installed package."""
    return user_dir(out) / dataset / task / "ood.json"


def read_split_json(path: str | os.PathLike, hint: str = "") -> dict:
    """Read and structurally check a split file; any defect is one-line `UserError`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no OOD split at {p}; {hint}".rstrip("; "))
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read split {p}: {' '.join(str(e).split())}; {hint}".rstrip("; ")) from None
    problems = structure_problems(doc)
    if problems:
        raise UserError(f"{p} is not a valid split file: {problems[0]}; {hint}".rstrip("; "))
    return doc


def structure_problems(doc: object) -> list[str]:
    """What makes a document unusable as a split (shape, types, duplicates, overlaps, sizes)."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    ids = doc.get("ids")
    if not isinstance(ids, dict) or not set(SPLITS) <= set(ids):
        return ["no ids for train/valid/test"]
    out = []
    for s in SPLITS:
        if not isinstance(ids[s], list) or not all(isinstance(v, str) for v in ids[s]):
            return [f"ids.{s} is not a list of id strings"]
        if not ids[s]:
            out.append(f"ids.{s} is empty")
        dup = len(ids[s]) - len(set(ids[s]))
        if dup:
            out.append(f"ids.{s} has {dup} duplicate id(s)")
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            both = set(ids[a]) & set(ids[b])
            if both:
                out.append(f"ids.{a} and ids.{b} share {len(both)} id(s), e.g. {sorted(both)[0]!r}")
    sizes = (doc.get("ood") or {}).get("sizes") if isinstance(doc.get("ood"), dict) else None
    if isinstance(sizes, dict):
        for s in SPLITS:
            if s in sizes and sizes[s] != len(ids[s]):
                out.append(f"ood.sizes.{s} states {sizes[s]} but ids.{s} lists {len(ids[s])}")
    return out


def coverage_problems(doc: dict, known: list[str]) -> list[str]:
    """The split against the data it serves: every listed id known, every known id listed."""
    listed = set().union(*(doc["ids"][s] for s in SPLITS))
    known_set = set(known)
    unknown = sorted(listed - known_set)
    missing = sorted(known_set - listed)
    out = []
    if unknown:
        out.append(f"lists {len(unknown)} id(s) not in the data, e.g. {unknown[0]!r}")
    if missing:
        out.append(f"leaves {len(missing)} id(s) of the data out, e.g. {missing[0]!r}")
    return out


def hint(dataset: str, task: str) -> str:
    return f"run `mer-bench split build --dataset {dataset} --task {task}`"
