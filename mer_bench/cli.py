"""`mer-bench` command line: data, ls, scenario, split, run, grid, report, plot, compare,
complexity, tune.

Every handler raises `UserError` for bad input; `main` turns it into one line on stderr and
exit code 2. Heavy imports happen inside handlers so `mer-bench ls` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from mer_bench.errors import UserError
from mer_bench.paths import results_default

EPILOG = """quick start:
  mer-bench run --model cider --scenario rmfm-ood     # embedded synth-mosi, generated on first use
  mer-bench report && mer-bench plot                  # tables and curves from local-results/
  mer-bench compare --models cider,mult --scenario rmfm-iid --results results   # on the board
  mer-bench ls models|scenarios|datasets
"""
STORE_HELP = "results store (default: $MER_BENCH_RESULTS, else local-results; the board: results)"


def _floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise UserError(f"bad rate list {text!r}; expected comma-separated numbers in [0, 1]") from None
    if not vals or any(not 0.0 <= v <= 1.0 for v in vals):
        raise UserError(f"bad rate list {text!r}; expected comma-separated numbers in [0, 1]")
    return vals


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise UserError(f"bad seed list {text!r}; expected comma-separated integers") from None
    if not vals:
        raise UserError(f"bad seed list {text!r}; expected comma-separated integers")
    return vals


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _count(high: int):
    """argparse type: an integer in [1, high] (refused up front: one line, exit 2)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not 1 <= v <= high:
            raise argparse.ArgumentTypeError(f"must be in [1, {high}], got {v}")
        return v

    parse.__name__ = "count"
    return parse


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {v}")
    return v


def _scale(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < v <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


# ----------------------------------------------------------------------------- data
def cmd_data_synth(a: argparse.Namespace) -> None:
    from mer_bench.data.synth import synthesize

    print(synthesize(a.dataset, variant=a.variant, seed=a.seed, scale=a.scale, out=a.out))


def cmd_data_verify(a: argparse.Namespace) -> None:
    from mer_bench.data.verify import verify

    print(verify(a.target, data_root=a.data_root))


def cmd_data_info(a: argparse.Namespace) -> None:
    from mer_bench.data.verify import info

    print(info(a.target, data_root=a.data_root))


def cmd_data_build(a: argparse.Namespace) -> None:
    from mer_bench.data.realtext import build_from_label_csv

    print(
        build_from_label_csv(
            a.label_csv, encoder=a.encoder, out=a.out, seed=a.seed, variant=a.variant
        )
    )


# ----------------------------------------------------------------------------- ls
def cmd_ls(a: argparse.Namespace) -> None:
    from tabulate import tabulate

    if a.what == "models":
        from mer_bench.models import load_builtin_models

        rows = [
            (n, e.cls.output, e.cls.training, e.description)
            for n, e in load_builtin_models().items()
        ]
        print(tabulate(rows, headers=["model", "output", "training", "description"]))
        from mer_bench.models import WRAPPERS

        if WRAPPERS.names():
            print("\nwrappers (compose as MODEL+WRAPPER): " + ", ".join(WRAPPERS.names()))
    elif a.what == "scenarios":
        from mer_bench.scenarios import SCENARIOS

        rows = [
            (n, s.version, ",".join(s.grid_labels()), s.definition)
            for n, s in SCENARIOS.items()
        ]
        print(tabulate(rows, headers=["scenario", "version", "test grid", "definition"]))
    else:
        from mer_bench.data.registry import DATASETS

        rows = [(n, e.kind, ",".join(e.variants), e.cross_partner or "-", e.description)
                for n, e in DATASETS.items()]
        print(tabulate(rows, headers=["dataset", "kind", "variants", "cross test", "description"]))


# ----------------------------------------------------------------------------- scenario
def cmd_scenario_stats(a: argparse.Namespace) -> None:
    from mer_bench.scenarios.stats import format_stats, scenario_stats

    stats = scenario_stats(
        a.scenario,
        dataset=a.dataset,
        variant=a.variant,
        rates=_floats(a.rates) if a.rates is not None else None,
        seed=a.seed,
        data_root=a.data_root,
        scale=a.scale,
    )
    print(json.dumps(stats) if a.json else format_stats(stats))


# ----------------------------------------------------------------------------- split
def cmd_split_build(a: argparse.Namespace) -> None:
    from mer_bench.splits.search import build_split_cli

    print(
        build_split_cli(
            dataset=a.dataset,
            task=a.task,
            label_csv=a.label_csv,
            seed=a.seed,
            out=a.out,
            data_root=a.data_root,
            variant=a.variant,
            strength=a.strength,
            priors_name=a.priors,
        )
    )


def cmd_split_check(a: argparse.Namespace) -> None:
    from mer_bench.splits.check import check_split_cli

    print(
        check_split_cli(
            dataset=a.dataset,
            task=a.task,
            split=a.split,
            label_csv=a.label_csv,
            data_root=a.data_root,
            path=a.path,
            probe=a.probe,
            variant=a.variant,
        )
    )


# ----------------------------------------------------------------------------- run/grid
def _run_config(a: argparse.Namespace, model: str, scenario: str):
    from mer_bench.training.runner import RunConfig

    return RunConfig(
        model=model,
        scenario=scenario,
        dataset=a.dataset,
        variant=a.variant,
        task=a.task,
        protocol=a.protocol,
        epochs=a.epochs,
        device=a.device,
        rates=tuple(_floats(a.rates)) if a.rates is not None else None,
        train_policy=a.train_policy,
        batch_size=a.batch_size,
        patience=a.patience,
        hparams=tuple(sorted(_hparams(a.hp).items())),
        data_root=a.data_root,
        scale=a.scale,
        compat=a.compat,
        ablations=tuple(sorted(_names(a.ablate))) if a.ablate else (),
        text_encoder=a.text_encoder,
        hp_from=a.hp_from,
    )


def _hparams(items: Sequence[str] | None) -> dict:
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"bad --hp {item!r}; expected NAME=VALUE")
        k, v = item.split("=", 1)
        if not k.strip():
            raise UserError(f"bad --hp {item!r}; expected NAME=VALUE")
        if k in out:
            raise UserError(f"--hp {k} is given twice")
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, RecursionError):
            out[k] = v
    return out


def cmd_run(a: argparse.Namespace) -> None:
    from mer_bench.training.runner import run_cells
    from mer_bench.training.validate import check_seeds

    seeds = _ints(a.seeds)
    check_seeds(seeds)
    cells = [(_run_config(a, a.model, a.scenario), s) for s in seeds]
    run_cells(cells, results=a.results, force=a.force, jobs=1, backend="joblib", progress=True)


def cmd_grid(a: argparse.Namespace) -> None:
    from mer_bench.training.runner import run_cells
    from mer_bench.training.validate import check_seeds

    check_seeds(_ints(a.seeds))
    if not _names(a.models) or not _names(a.scenarios):
        raise UserError("--models and --scenarios each need at least one name")
    cells = [
        (_run_config(a, m, s), seed)
        for m in _names(a.models)
        for s in _names(a.scenarios)
        for seed in _ints(a.seeds)
    ]
    run_cells(
        cells,
        results=a.results,
        force=a.force,
        jobs=a.jobs,
        backend=a.backend,
        address=a.address,
        progress=not a.quiet,
    )


# ----------------------------------------------------------------------------- report/plot
def cmd_report(a: argparse.Namespace) -> None:
    from mer_bench.results.report import write_report

    print(write_report(a.results, out=a.out, n_boot=a.bootstrap,
                       convention=a.robustness_convention))


def cmd_plot(a: argparse.Namespace) -> None:
    from mer_bench.results.curves import write_plots

    if a.text_encoder is not None:
        raise UserError("plot reads the store and already draws each text path in its own "
                        "figures (`dataset [text NAME]`); --text-encoder belongs to run, grid, tune "
                        "and complexity")

    for path in write_plots(a.results, out=a.out, n_boot=a.bootstrap):
        print(path)


def cmd_compare(a: argparse.Namespace) -> None:
    from mer_bench.results.compare import compare_models, compare_stores

    models = _names(a.models) if a.models else None
    if a.against:
        print(compare_stores(a.results, a.against, models, a.scenario, a.metric, a.bootstrap))
        return
    if not models or not a.scenario:
        raise UserError("compare needs --models A,B --scenario S, or --results MINE --against DIR")
    print(compare_models(a.results, models, a.scenario, a.metric, a.protocol, a.bootstrap))


def cmd_complexity(a: argparse.Namespace) -> None:
    from mer_bench.training.complexity import complexity_cli

    print(
        complexity_cli(
            a.model,
            dataset=a.dataset,
            variant=a.variant,
            task=a.task,
            device=a.device,
            data_root=a.data_root,
            scale=a.scale,
            hparams=_hparams(a.hp),
            epochs=a.epochs,
            text_encoder=a.text_encoder,
        )
    )


def cmd_tune(a: argparse.Namespace) -> None:
    from mer_bench.training.tune import tune_cli

    print(
        tune_cli(
            model=a.model,
            scenario=a.scenario,
            dataset=a.dataset,
            variant=a.variant,
            task=a.task,
            trials=a.trials,
            epochs=a.epochs,
            seed=a.seed,
            results=a.results,
            device=a.device,
            data_root=a.data_root,
            scale=a.scale,
            text_encoder=a.text_encoder,
        )
    )


# ----------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit code 2, as for every user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def _common_data(p: argparse.ArgumentParser, dataset_default: str | None = "synth-mosi") -> None:
    p.add_argument("--dataset", default=dataset_default, help="dataset name (see `ls datasets`)")
    p.add_argument("--variant", default="unaligned", choices=["aligned", "unaligned"])
    p.add_argument("--data-root", default=None, help="root of real data (else $MER_BENCH_DATA)")
    p.add_argument("--scale", type=_scale, default=None, help="shrink a dataset, in (0, 1]")


def _text_encoder_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--text-encoder", default=None,
        help="minilm or a local BERT-family directory in the loop, fed the corrupted ids "
        "(default $MER_BENCH_TEXT_ENCODER, else fixed text features; 'none' forces them)",
    )


def _run_args(p: argparse.ArgumentParser) -> None:
    _common_data(p)
    p.add_argument("--task", default="binary", choices=["binary", "seven"])
    p.add_argument("--seeds", default="1111", help="comma-separated seeds (default 1111)")
    p.add_argument("--protocol", default="fair", choices=["fair", "paper"])
    p.add_argument("--epochs", type=_count(100_000), default=None,
                   help="max epochs (model default if unset)")
    p.add_argument("--patience", type=_count(100_000), default=None)
    p.add_argument("--batch-size", type=_count(1_000_000), default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--rates", default=None, help="test rates, e.g. 0,0.5,1 (scenario grid if unset)")
    p.add_argument(
        "--train-policy",
        default=None,
        choices=["per-sample-uniform", "per-element-uniform", "fixed-rate", "none"],
    )
    p.add_argument("--hp", action="append", help="model hyper-parameter NAME=VALUE (repeatable)")
    p.add_argument("--compat", default=None, help="official behaviours, e.g. official or a,b")
    p.add_argument("--ablate", default=None, help="ablation switches, comma-separated")
    _text_encoder_arg(p)
    p.add_argument("--hp-from", default=None, help="tuned:PATH, a `mer-bench tune` *_best.json")
    p.add_argument("--results", default=results_default(), help=STORE_HELP)
    p.add_argument(
        "--force", action="store_true",
        help="recompute finished cells and retrain their models (each shared training once)",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="mer-bench",
        description="Benchmark robust multimodal emotion recognition under missing modalities "
        "and distribution shift.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="synthesise, build, verify and inspect datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("synth", help="generate an embedded synthetic dataset")
    p.add_argument("--dataset", default="synth-mosi")
    p.add_argument("--variant", default="unaligned", choices=["aligned", "unaligned"])
    p.add_argument("--seed", type=_seed, default=None)
    p.add_argument("--scale", type=_scale, default=None)
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_data_synth)
    for name, func, hlp in (
        ("verify", cmd_data_verify, "check schema, shapes, counts, finiteness, checksums"),
        ("info", cmd_data_info, "describe a dataset file or name"),
    ):
        p = dsub.add_parser(name, help=hlp)
        p.add_argument("target", help="dataset name or path to a pickle")
        p.add_argument("--data-root", default=None)
        p.set_defaults(func=func)
    p = dsub.add_parser("build", help="build an MMSA pickle from a real label.csv")
    p.add_argument("--label-csv", required=True)
    p.add_argument("--encoder", default="minilm", help="minilm or a local BERT-family directory")
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=_seed, default=None)
    p.add_argument("--variant", default="unaligned", choices=["aligned", "unaligned"])
    p.set_defaults(func=cmd_data_build)

    p = sub.add_parser("ls", help="list models, scenarios or datasets")
    p.add_argument("what", choices=["models", "scenarios", "datasets"])
    p.set_defaults(func=cmd_ls)

    sc = sub.add_parser("scenario", help="inspect missing-data scenarios")
    ssub = sc.add_subparsers(dest="scenario_command", required=True)
    p = ssub.add_parser("stats", help="measured missing fractions per rate and modality")
    p.add_argument("scenario")
    _common_data(p)
    p.add_argument("--rates", default=None)
    p.add_argument("--seed", type=_seed, default=1111)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scenario_stats)

    sp = sub.add_parser("split", help="build and check OOD splits")
    spsub = sp.add_subparsers(dest="split_command", required=True)
    p = spsub.add_parser("build", help="build a repartitioned OOD split and its cf vocabulary")
    _common_data(p, dataset_default=None)
    p.add_argument("--task", default="binary", choices=["binary", "seven"])
    p.add_argument("--label-csv", default=None)
    p.add_argument("--seed", type=_seed, default=1111)
    p.add_argument("--strength", default=None,
                   help="0..1 of the way from the IID to the maximal shift, or max "
                   "(default 0.9; synth-mosei 0.7, calibrated)")
    p.add_argument("--priors", default=None, choices=["cider"],
                   help="hit CIDer's published training priors exactly (train counts)")
    p.add_argument("--out", default=None, help="splits directory (default: $MER_BENCH_SPLITS, "
                   "else ~/.local/share/mer-bench/splits; read before the shipped splits)")
    p.set_defaults(func=cmd_split_build)
    p = spsub.add_parser("check", help="print the shift statistic and class priors of a split")
    _common_data(p, dataset_default=None)
    p.add_argument("--task", default="binary", choices=["binary", "seven"])
    p.add_argument("--split", default="ood", help="iid, ood, or a split json path")
    p.add_argument("--label-csv", default=None)
    p.add_argument("--path", default=None, help="a split json to check")
    p.add_argument("--probe", default="auto", choices=["auto", "text", "none"],
                   help="linear probe IID vs OOD: auto (text, and all modalities when the "
                   "dataset's features are at hand), text, none")
    p.set_defaults(func=cmd_split_check)

    p = sub.add_parser("run", help="train and evaluate one model on one scenario")
    p.add_argument("--model", required=True)
    p.add_argument("--scenario", required=True)
    _run_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("grid", help="run every (model, scenario, seed) cell in parallel")
    p.add_argument("--models", required=True)
    p.add_argument("--scenarios", required=True)
    _run_args(p)
    p.add_argument("--backend", default="joblib", choices=["joblib", "ray"])
    p.add_argument("--jobs", type=_count(256), default=1)
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("report", help="leaderboards and paper-shaped tables from the store")
    p.add_argument("--results", default=results_default(), help=STORE_HELP)
    p.add_argument("--out", default=None, help="output directory (default: the store)")
    p.add_argument("--bootstrap", type=_positive_int, default=1000, help="bootstrap resamples")
    p.add_argument("--robustness-convention", default="trapezoid",
                   choices=["trapezoid", "multibench-step"])
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("plot", help="curves, SMM bars, representation scatter, corrections")
    p.add_argument("--results", default=results_default(), help=STORE_HELP)
    p.add_argument("--out", default=None)
    p.add_argument("--bootstrap", type=_positive_int, default=1000, help="bootstrap resamples")
    p.add_argument("--text-encoder", default=None, help=argparse.SUPPRESS)  # refused: see cmd_plot
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("compare", help="paired tests: two models of a store, or two stores")
    p.add_argument("--models", default=None, help="A,B (with --against: restrict its models)")
    p.add_argument("--scenario", default=None)
    p.add_argument("--metric", default=None, help="default: the task's headline metric")
    p.add_argument("--protocol", default="fair", choices=["fair", "paper"])
    p.add_argument("--results", default=results_default(),
                   help="the store (with --against: MINE); " + STORE_HELP)
    p.add_argument("--against", default=None, help="a second store, e.g. the committed results/")
    p.add_argument("--bootstrap", type=_positive_int, default=1000, help="bootstrap resamples")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("complexity", help="parameters, peak memory and seconds per epoch")
    p.add_argument("--model", required=True)
    _common_data(p)
    p.add_argument("--task", default="binary", choices=["binary", "seven"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--hp", action="append")
    p.add_argument("--epochs", type=_count(100_000), default=1, help="epochs to time")
    _text_encoder_arg(p)
    p.set_defaults(func=cmd_complexity)

    p = sub.add_parser("tune", help="Optuna search on validation only (extra `tune`)")
    p.add_argument("--model", default="cider")
    p.add_argument("--scenario", default="rmfm-iid")
    _common_data(p)
    p.add_argument("--task", default="binary", choices=["binary", "seven"])
    p.add_argument("--trials", type=_count(100_000), default=20)
    p.add_argument("--epochs", type=_count(100_000), default=None)
    p.add_argument("--seed", type=_seed, default=1111)
    p.add_argument("--results", default=results_default(), help=STORE_HELP)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _text_encoder_arg(p)
    p.set_defaults(func=cmd_tune)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from mer_bench.alloc import tune_allocator

    tune_allocator()  # before any tensor exists: see mer_bench/alloc.py
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"mer-bench: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a path the user named: unreadable, not writable, disk full
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"mer-bench: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mer-bench: interrupted; finished cells are kept, rerun to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
