"""The suite as an installed tool: a wheel built from the repository, installed into a fresh
virtual environment, runs the main job from a directory with no checkout, finds the shipped
`mosi` split, compiles its C kernels into the user's cache, and `split build` writes nothing
inside the installed package (`tox -e slow`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_NEVER = shutil.ignore_patterns(".git", ".tox", ".venv", "build", "dist", "*.egg-info",
                                "__pycache__", ".pytest_cache", ".ruff_cache")


def SKIP(directory: str, names: list[str]) -> set[str]:
    """Build-irrelevant files; the committed results store only at the top level."""
    top = {"results"} if Path(directory) == ROOT else set()
    return set(_NEVER(directory, names)) | (top & set(names))


def _sh(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-2000:])
    return p


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_wheel_installs_and_runs_without_a_checkout(tmp_path):
    pytest.importorskip("setuptools")  # built offline, without build isolation
    try:
        import setuptools.command.bdist_wheel  # noqa: F401  (setuptools >= 70.1)
    except ImportError:
        pytest.importorskip("wheel")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)  # build from a copy: the checkout stays clean
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MER_BENCH_SPLITS")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               MER_BENCH_CACHE=str(tmp_path / "cache"), XDG_DATA_HOME=str(tmp_path / "data"))
    _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)], tmp_path, env)
    wheel = next((tmp_path / "dist").glob("mer_bench-*.whl"))

    venv = tmp_path / "venv"
    _sh([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    py = venv / "bin" / "python"
    _sh([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path, env)
    site = Path(_sh([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    tmp_path, env).stdout.strip())
    # dependencies (torch, pandas, ...) come from this interpreter's environment, after the
    # wheel's own files (a plain path entry: no editable-install hooks run)
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pkg = site / "mer_bench"
    where = _sh([str(py), "-c", "import mer_bench; print(mer_bench.__file__)"], tmp_path, env)
    assert Path(where.stdout.strip()).parent == pkg

    work = tmp_path / "work"  # no checkout anywhere near
    work.mkdir()
    cli = [str(venv / "bin" / "mer-bench")]
    before = _tree(pkg)
    _sh([*cli, "run", "--model", "lf_dnn", "--scenario", "rmfm-ood", "--scale", "0.1",
         "--epochs", "1"], work, env)
    assert list((work / "local-results" / "runs").glob("lf_dnn__synth-mosi__*.json"))
    # the shipped C sources compile from the installed package into the user's cache
    p = _sh([*cli, "run", "--model", "cider", "--scenario", "rmfm-ood", "--scale", "0.1",
             "--epochs", "1"], work, env)
    assert "not compiled" not in p.stderr
    assert list((tmp_path / "cache" / "native").glob("kernels-*.so"))
    label_csv = ROOT.parent / "shared" / "data" / "mosi" / "label.csv"
    if label_csv.is_file():  # the shipped `mosi` split is found by the installed package
        p = _sh([*cli, "split", "check", "--dataset", "mosi", "--task", "binary",
                 "--label-csv", str(label_csv), "--split", "ood"], work, env)
        assert "mosi" in p.stdout
    _sh([*cli, "split", "build", "--dataset", "synth-mosi", "--task", "binary", "--scale", "0.1"],
        work, env)
    assert _tree(pkg) == before, "split build wrote inside the installed package"
