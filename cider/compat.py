"""Official-code behaviours of CIDer that mer-bench fixes by default, each behind one switch.

Why: decisions.md keeps the default faithful to the paper with plain bugs fixed, but the
project must still be able to reproduce the official code (`compat="official"`) to check
itself against it. Every switch is recorded in a run's provenance.
"""

from __future__ import annotations

from collections.abc import Sequence

from mer_bench.errors import UserError

COMPAT_SWITCHES: dict[str, str] = {
    "batch_pe": "MCT positional encoding indexed by position in the batch, not by time step",
    "double_teacher_grad": "teacher gradient not cleared before the student step (applied twice)",
    "per_element_train": "training corruption with a uniform rate drawn per element (Bernoulli 0.5)",
    "split_class_means": "MCM class features at valid/test = mean of that split's class means",
    "stale_cv": "binary bias-word CV reuses a stale value for tokens seen only in neutral samples",
    "wsam_aligned": "WSAM modules built (and counted) in aligned mode although unused",
}


def expand_compat(
    value: str | Sequence[str] | None, switches: dict[str, str] | None = None
) -> frozenset[str]:
    """`"official"` -> every switch; `""`/None -> none; else a comma list or sequence of
    switch names (whitespace ignored). Unknown names raise a `UserError` naming the valid ones.
    `switches` is a model's own table (`BenchModel.compat_switches`); default CIDer's."""
    switches = COMPAT_SWITCHES if switches is None else switches
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    names: set[str] = set()
    for raw in items:
        name = str(raw).strip()
        if not name:
            continue
        if name == "official":
            names.update(switches)
        elif name in switches:
            names.add(name)
        else:
            valid = ", ".join(["official", *sorted(switches)])
            raise UserError(f"unknown compat switch {name!r}; choose from: {valid}")
    return frozenset(names)
