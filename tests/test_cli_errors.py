"""Every command and every argument kind: bad input is one line on stderr, exit 2, no
traceback, and nothing is trained (checked in process: an uncaught exception fails the test)."""

from __future__ import annotations

import pytest

from mer_bench.cli import main
from mer_bench.training import runner, trainer

RUN = ["run", "--model", "lf_dnn", "--scenario", "rmfm-iid", "--scale", "0.05"]


def _cases(tmp_path):
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x80\x04not a pickle")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("video_id,clip_id\n1,2\n")
    res = ["--results", str(tmp_path / "res")]
    return {
        # data
        "synth: unknown dataset": ["data", "synth", "--dataset", "nope"],
        "synth: scale 0": ["data", "synth", "--scale", "0"],
        "synth: scale nan": ["data", "synth", "--scale", "nan"],
        "synth: negative seed": ["data", "synth", "--seed", "-1"],
        "synth: out is a directory": ["data", "synth", "--scale", "0.05", "--out", str(tmp_path)],
        "synth: bad variant": ["data", "synth", "--variant", "diagonal"],
        "verify: missing file": ["data", "verify", str(tmp_path / "none.pkl")],
        "verify: garbage file": ["data", "verify", str(garbage)],
        "info: garbage file": ["data", "info", str(garbage)],
        "build: missing csv": ["data", "build", "--label-csv", str(tmp_path / "none.csv")],
        "build: csv without columns": ["data", "build", "--label-csv", str(bad_csv)],
        "build: bad seed": ["data", "build", "--label-csv", str(bad_csv), "--seed", "x"],
        # ls, scenario
        "ls: bad kind": ["ls", "everything"],
        "stats: unknown scenario": ["scenario", "stats", "nope", "--scale", "0.05"],
        "stats: bad rates": ["scenario", "stats", "rmfm", "--rates", "0,2"],
        "stats: bad scale": ["scenario", "stats", "rmfm", "--scale", "-1"],
        # split
        "split build: unknown dataset": ["split", "build", "--dataset", "nope"],
        "split build: bad task": ["split", "build", "--dataset", "synth-mosi", "--task", "five"],
        "split check: missing path": ["split", "check", "--dataset", "synth-mosi",
                                      "--path", str(tmp_path / "none.json")],
        # run: numbers
        "run: epochs 0": [*RUN, "--epochs", "0", *res],
        "run: epochs -1": [*RUN, "--epochs", "-1", *res],
        "run: epochs text": [*RUN, "--epochs", "many", *res],
        "run: batch 0": [*RUN, "--batch-size", "0", *res],
        "run: patience 0": [*RUN, "--patience", "0", *res],
        "run: seeds negative": [*RUN, "--seeds", "-5", *res],
        "run: seeds huge": [*RUN, "--seeds", str(2**40), *res],
        "run: seeds duplicate": [*RUN, "--seeds", "1,1", *res],
        "run: seeds empty": [*RUN, "--seeds", "", *res],
        # run: rates
        "run: rates duplicate": [*RUN, "--rates", "0.5,0.5", *res],
        "run: rates unsorted": [*RUN, "--rates", "1,0.5", *res],
        "run: rates empty": [*RUN, "--rates", "", *res],
        "run: rates nan": [*RUN, "--rates", "0,nan", *res],
        # run: hyper-parameters
        "hp: no value": [*RUN, "--hp", "dropout", *res],
        "hp: empty name": [*RUN, "--hp", "=1", *res],
        "hp: nan": [*RUN, "--hp", "dropout=NaN", *res],
        "hp: out of range": [*RUN, "--hp", "dropout=2", *res],
        "hp: wrong type float for int": [*RUN, "--hp", "hidden_text=1.5", *res],
        "hp: wrong type bool for int": [*RUN, "--hp", "hidden_text=true", *res],
        "hp: zero size": [*RUN, "--hp", "hidden_text=0", *res],
        "hp: string for number": [*RUN, "--hp", "dropout=high", *res],
        "hp: dotted name": [*RUN, "--hp", "a.b=1", *res],
        "hp: unknown wrapper key": ["run", "--model", "lf_dnn+maci", "--scenario", "rmfm-iid",
                                    "--hp", "maci.bogus=1", *res],
        "hp: given twice": [*RUN, "--hp", "dropout=0.1", "--hp", "dropout=0.2", *res],
        "hp: gear gce unknown": ["run", "--model", "gear", "--scenario", "rmfm-iid", "--hp",
                                 "gce=bogus", *res],
        "hp: gear heads not dividing dim": ["run", "--model", "gear", "--scenario", "rmfm-iid",
                                            "--hp", "heads=5", *res],
        "hp: gear q 0": ["run", "--model", "gear", "--scenario", "rmfm-iid", "--hp", "q=0", *res],
        "hp: gear weight, under clue": ["run", "--model", "gear+clue", "--scenario", "rmfm-iid",
                                        "--hp", "weight=max", *res],
        "hp: clue rescaling cider's own step": ["run", "--model", "cider+clue", "--scenario",
                                                "rmfm-iid", "--hp", "clue.base_loss=0.5", *res],
        "hp: clue wrong type": ["run", "--model", "mult+clue", "--scenario", "rmfm-iid",
                                "--hp", "clue.kl=3", *res],
        "run: dicmor on unaligned data": ["run", "--model", "dicmor", "--scenario", "rmfm-iid",
                                          *res],
        "run: dicmor_all on unaligned data": ["run", "--model", "dicmor_all", "--scenario",
                                              "rmfm-iid", "--variant", "unaligned", *res],
        "run: compat on a model without it": [*RUN, "--compat", "official", *res],
        "run: bad train policy": [*RUN, "--train-policy", "sometimes", *res],
        "run: bad device": [*RUN, "--device", "tpu", *res],
        "run: bad variant": [*RUN, "--variant", "diagonal", *res],
        "run: bad task": [*RUN, "--task", "five", *res],
        "run: ablate on a model without it": [*RUN, "--ablate", "no_mcm", *res],
        # run: paths
        "run: results is a file": [*RUN, "--results", str(a_file)],
        "run: results under a file": [*RUN, "--results", str(a_file / "sub")],
        "run: dataset path missing": [*RUN, "--dataset", "../nowhere/x.pkl", *res],
        "run: dataset garbage": [*RUN, "--dataset", str(garbage), *res],
        # grid
        "grid: jobs 0": ["grid", "--models", "lf_dnn", "--scenarios", "rmfm-iid", "--jobs", "0",
                         *res],
        "grid: no models": ["grid", "--models", ",", "--scenarios", "rmfm-iid", *res],
        "grid: unknown model": ["grid", "--models", "lf_dnn,nope", "--scenarios", "rmfm-iid",
                                *res],
        "grid: bad backend": ["grid", "--models", "lf_dnn", "--scenarios", "rmfm-iid",
                              "--backend", "mpi", *res],
        # report, plot, complexity, tune
        "report: no store": ["report", "--results", str(tmp_path / "none")],
        "report: store is a file": ["report", "--results", str(a_file)],
        "plot: no store": ["plot", "--results", str(tmp_path / "none")],
        "complexity: unknown model": ["complexity", "--model", "nope"],
        "complexity: epochs 0": ["complexity", "--model", "lf_dnn", "--epochs", "0"],
        "complexity: bad hp": ["complexity", "--model", "lf_dnn", "--hp", "dropout=-1"],
        "complexity: bad gear hp": ["complexity", "--model", "gear", "--hp", "text_pool=max"],
        "complexity: dicmor unaligned": ["complexity", "--model", "dicmor"],
        "grid: dicmor_all unaligned": ["grid", "--models", "lf_dnn,dicmor_all", "--scenarios",
                                       "rmfm-iid", *res],
        "tune: trials 0": ["tune", "--trials", "0"],
        "tune: unknown model": ["tune", "--model", "nope", "--trials", "1", *res],
        "tune: table encoder": ["tune", "--trials", "1", "--text-encoder", "table", *res],
        "complexity: table encoder": ["complexity", "--model", "lf_dnn", "--text-encoder", "table"],
        "plot: text encoder": ["plot", "--text-encoder", "minilm", *res],
    }


CASE_NAMES = list(_cases(__import__("pathlib").Path("/tmp")))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_exit_2(name, tmp_path, capsys, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("trained on bad input")

    monkeypatch.setattr(runner, "train", no_training)
    monkeypatch.setattr(trainer, "train", no_training)
    argv = _cases(tmp_path)[name]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, (name, err)
    assert len(err.splitlines()) == 1, (name, err)
    assert "Traceback" not in err and "error" in err


@pytest.mark.parametrize("change, needle", [
    (dict(epochs=0), "--epochs"), (dict(epochs=-1), "--epochs"), (dict(patience=0), "--patience"),
    (dict(batch_size=0), "--batch-size"), (dict(rates=(0.5, 0.5)), "increasing"),
    (dict(rates=()), "empty"), (dict(hparams=(("dropout", float("nan")),)), "finite"),
])
def test_the_python_api_checks_the_same_numbers(change, needle):
    """`run_cells`/`run_cell` callers get the same up-front checks as the CLI (before, epochs=0
    silently meant the model default and epochs=-1 stored an untrained model as finished)."""
    from mer_bench.errors import UserError

    cfg = runner.RunConfig(model="lf_dnn", scenario="rmfm-iid", **change)
    with pytest.raises(UserError, match=needle):
        runner.resolve(cfg, 1111)
    with pytest.raises(UserError, match="seed"):
        runner.resolve(runner.RunConfig(model="lf_dnn", scenario="rmfm-iid"), -1)


MODEL_DECLARED = {  # case name -> what the one line must name
    "hp: gear gce unknown": "gce", "hp: gear heads not dividing dim": "heads",
    "hp: gear q 0": "q", "hp: gear weight, under clue": "weight",
    "hp: clue rescaling cider's own step": "base_loss", "hp: clue wrong type": "clue.kl",
    "run: dicmor on unaligned data": "aligned", "run: dicmor_all on unaligned data": "aligned",
    "complexity: bad gear hp": "text_pool", "complexity: dicmor unaligned": "aligned",
    "grid: dicmor_all unaligned": "dicmor_all",
}


@pytest.mark.parametrize("name", list(MODEL_DECLARED))
def test_model_declared_checks_refuse_before_loading_data(name, tmp_path, capsys, monkeypatch):
    """GEAR's `validate_hparams` and DiCMoR's `variants` are checked with the arguments: the
    refusal names the value and comes before any data is loaded (before, only the model's
    constructor refused them, after loading)."""
    import mer_bench.data.registry
    import mer_bench.datasets

    def no_loading(*a, **k):
        raise AssertionError("loaded data on bad input")

    monkeypatch.setattr(mer_bench.datasets, "load_dataset", no_loading)
    monkeypatch.setattr(mer_bench.data.registry, "load_iid", no_loading)
    rc = main(_cases(tmp_path)[name])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, (name, err)
    assert MODEL_DECLARED[name] in err, err


@pytest.mark.parametrize("model, hp, variant", [
    ("gear", (("gce", ""), ("weight", ""), ("heads", 8)), "unaligned"),
    ("gear+clue", (("text_pool", "cls"),), "unaligned"),
    ("cider+clue", (("clue.base_loss", 0.0),), "unaligned"),
    ("dicmor", (), "aligned"), ("dicmor_all", (), "aligned"),
])
def test_model_declared_checks_admit_valid_runs(model, hp, variant):
    """The same checks let the official GEAR switches and DiCMoR on aligned data through."""
    cfg = runner.RunConfig(model=model, scenario="rmfm-iid", variant=variant, hparams=hp)
    assert runner.resolve(cfg, 1111).hparams == dict(hp)
