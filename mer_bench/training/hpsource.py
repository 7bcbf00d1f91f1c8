"""Where a run's hyper-parameters came from (`hparams_source` in every record).

Why: CIDer's released defaults were chosen by its authors' search on the *test* set, so a
number obtained with them is not a clean held-out figure. Every record says whether its
values are a model's defaults (and what those defaults are known to be), validation-tuned
values from `mer-bench tune` (`--hp-from tuned:PATH`), or hand overrides (`--hp`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mer_bench.errors import UserError

DEFAULT_SOURCE = "model defaults (the model module's documented configuration)"


def load_tuned(spec: str, model: str) -> tuple[dict[str, Any], str]:
    """`tuned:PATH` (a `mer-bench tune` `*_best.json`) -> (its best parameters, source line)."""
    kind, sep, path = spec.partition(":")
    if kind != "tuned" or not sep or not path:
        raise UserError(f"bad --hp-from {spec!r}; expected tuned:PATH (a `mer-bench tune` *_best.json)")
    file = Path(path).expanduser()
    try:
        summary = json.loads(file.read_text())
        params, trials = dict(summary["best_params"]), int(summary["budget"]["trials"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--hp-from {spec}: not a readable `mer-bench tune` summary ({e})") from None
    base = model.split("+")[0]
    if summary.get("model") != base:
        raise UserError(f"--hp-from {spec} was tuned for {summary.get('model')!r}, not {base!r}")
    objective = str(summary.get("objective", ""))
    if "valid" not in objective or "test" in objective.replace("test never used", ""):
        raise UserError(f"--hp-from {spec}: its objective {objective!r} is not validation-only")
    return params, f"tuned on validation, {trials} trials ({file.name})"


def describe(model_cls: type, overrides: dict[str, Any], tuned: str | None) -> str:
    """The source line: tuned or the model's default source, plus any `--hp` overrides."""
    source = tuned or str(getattr(model_cls, "hparams_source", "") or DEFAULT_SOURCE)
    names = sorted(k for k in overrides if k not in ("compat", "ablations"))
    return source + (f"; overridden by --hp: {', '.join(names)}" if names else "")
