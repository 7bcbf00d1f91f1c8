"""Up-front checks of a run's numbers and hyper-parameters (before any data or training).

Why: a bad value found after training wastes the training, and some bad values were not
found at all (`--epochs -1` stored an untrained model as finished, `--epochs 0` meant the
model default). Every check raises a one-line `UserError` naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mer_bench.errors import UserError

MAX_EPOCHS = 100_000
MAX_BATCH = 1_000_000
MAX_SEED = 2**32 - 1  # numpy and torch seeds
MAX_SEEDS = 1000  # seeds in one command


def check_count(name: str, value: int | None, high: int) -> None:
    """`None` (the model's default) or an integer in [1, high]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise UserError(f"{name} must be an integer in [1, {high}], got {value!r}")


def check_seeds(seeds: Sequence[int]) -> None:
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    if len(seeds) > MAX_SEEDS:
        raise UserError(f"--seeds lists {len(seeds)} seeds; at most {MAX_SEEDS}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise UserError(f"seed {s!r} is out of range; seeds are integers in [0, {MAX_SEED}]")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds lists a seed twice: {','.join(map(str, seeds))}")


def check_rates(rates: Sequence[float] | None) -> None:
    """`None` (the scenario's grid) or a non-empty, strictly increasing list in [0, 1]."""
    if rates is None:
        return
    shown = ",".join(map(str, rates))
    if not rates:
        raise UserError("--rates is empty; give comma-separated numbers in [0, 1] or omit it")
    if any(not isinstance(r, int | float) or not 0.0 <= r <= 1.0 for r in rates):
        raise UserError(f"bad rate list {shown!r}; expected numbers in [0, 1]")
    if any(b <= a for a, b in zip(rates, rates[1:])):
        raise UserError(f"--rates {shown} must be strictly increasing (no duplicates)")


def _check_value(name: str, value: Any, default: Any) -> None:
    """Type from the default; numbers finite, sizes >= 1, weights >= 0, dropouts in [0, 1)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"--hp {name}={value} is not a finite number")
    if default is None:
        return
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"--hp {name} must be true or false, got {value!r}")
        return
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"--hp {name} must be an integer, got {value!r}")
        low = 0 if "epoch" in name else 1
        if value < low:
            raise UserError(f"--hp {name} must be >= {low}, got {value}")
        return
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"--hp {name} must be a number, got {value!r}")
        if value < 0 or ("dropout" in name and value >= 1):
            rng = "[0, 1)" if "dropout" in name else ">= 0"
            raise UserError(f"--hp {name} must be {rng}, got {value}")
        return
    if isinstance(default, str) and not isinstance(value, str):
        raise UserError(f"--hp {name} must be a string, got {value!r}")
    if isinstance(default, tuple | list) and not isinstance(value, str | tuple | list):
        raise UserError(f"--hp {name} must be a list, got {value!r}")


def check_hparams(
    hp: Mapping[str, Any], defaults: Mapping[str, Any], model: str,
    wrappers: Mapping[str, Mapping[str, Any] | None],
) -> None:
    """Names known to the model (or `<wrapper>.name` for a wrapper in the model's name) and
    values of the default's type and range."""
    for name, value in hp.items():
        if "." in name:
            prefix, _, sub = name.partition(".")
            if prefix not in wrappers or not sub or "." in sub:
                known = ", ".join(f"{w}.NAME" for w in wrappers) or "none for this model"
                raise UserError(f"bad --hp name {name!r}: dotted names address a wrapper ({known})")
            wdefaults = wrappers[prefix]
            if wdefaults is not None:
                _known(sub, wdefaults, f"{model}'s {prefix}")
                _check_value(name, value, wdefaults[sub])
            continue
        _known(name, defaults, model)
        _check_value(name, value, defaults[name])


def _known(name: str, defaults: Mapping[str, Any], owner: str) -> None:
    if name not in defaults:
        raise UserError(
            f"unknown hyper-parameter {name} for {owner}; valid: "
            + (", ".join(sorted(defaults)) or "(none)")
        )


def check_declared(owner: Any, defaults: Mapping[str, Any], hp: Mapping[str, Any], **context: Any) -> None:
    """The owner's own `validate_hparams(merged, **context)` (a model class or wrapper may
    declare one for what a per-value check cannot see: choices, divisibility, a wrapper's
    `base` class), on its defaults merged with the request, so a bad value is refused before
    any data is loaded, not when the model is built."""
    declared = getattr(owner, "validate_hparams", None)
    if declared is not None:
        declared({**defaults, **hp}, **context)


def check_model_hparams(model: str, hp: Mapping[str, Any]) -> None:
    """`check_hparams` for a model name (`base` or `base+wrapper`) from the registries, then
    each model's and wrapper's declared `validate_hparams`."""
    from mer_bench.models import WRAPPERS, load_builtin_models

    base, *wrappers = model.split("+")
    cls = load_builtin_models().get(base).cls
    check_hparams(hp, cls.defaults, base,
                  {w: getattr(WRAPPERS.get(w), "defaults", None) for w in wrappers})
    check_declared(cls, cls.defaults, {k: v for k, v in hp.items() if "." not in k})
    for i, w in enumerate(wrappers):  # the first wrapper's base is the registered class
        wrap = WRAPPERS.get(w)
        own = {k[len(w) + 1:]: v for k, v in hp.items() if k.startswith(f"{w}.")}
        check_declared(wrap, getattr(wrap, "defaults", None) or {}, own, base=cls if i == 0 else None)


def check_model_variant(model: str, variant: str) -> None:
    """A model whose class declares `variants` (the data variants it can run on: DiCMoR's
    `("aligned",)`) refuses any other here, before the data is loaded."""
    from mer_bench.models import load_builtin_models

    base = model.split("+")[0]
    allowed = getattr(load_builtin_models().get(base).cls, "variants", None)
    if allowed is not None and variant not in allowed:
        raise UserError(f"model {base} runs on {' or '.join(allowed)} data only, not {variant}; "
                        f"use --variant {allowed[0]}")
