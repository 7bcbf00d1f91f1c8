"""Small C kernels compiled on first use with the machine's C compiler, cached per user.

Why: a few hot paths (CIDer's MCA at head width 4) are bound by PyTorch's per-op passes over
tensors that a fused loop keeps in registers. A C source ships with the package; the first
process that needs it compiles it (`cc -O3 -march=native`, well under a second) into the
per-user cache, keyed by the source, the compiler, the flags and the CPU, and later processes
load the cached library. Without a compiler, or with `MER_BENCH_NATIVE=0`, the callers keep
their PyTorch path (same results up to float rounding, slower).

Threads: the library is built with OpenMP where the compiler has it. torch's CPU build ships
its own `libgomp.so.1`, already loaded when a kernel is, so the library binds to it and its
parallel loops run on torch's thread pool (`torch.get_num_threads()` threads), whose workers
spin between torch's ops. Without OpenMP the range is split over Python threads instead
(ctypes calls release the GIL); measured, those contended with torch's spinning workers and
ran CIDer's MCA kernel 1.5-2x slower inside a training step than alone.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from mer_bench.paths import cache_dir

HEADERS = Path(__file__).parent  # vec.h, included by every kernel source
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-std=gnu11", "-shared", "-fPIC",
         f"-I{HEADERS}")
LIBS = ("-lm",)
OPENMP = ("-fopenmp",)
LANES = 16  # (sample, head) pairs per vector in the kernels (W in vec.h)
_loaded: dict[Path, ctypes.CDLL | None] = {}
_pool: ThreadPoolExecutor | None = None


def lane_blocks(batch: int, heads: int) -> int:
    """How many blocks of LANES (sample, head) pairs cover batch x heads."""
    return -(-batch * heads // LANES)


def strides(*tensors: torch.Tensor) -> ctypes.Array:
    """The tensors' strides, one after the other, as a C long array."""
    return (ctypes.c_long * sum(t.dim() for t in tensors))(*(s for t in tensors for s in t.stride()))


def enabled() -> bool:
    """False when `MER_BENCH_NATIVE=0` (read at each call, so tests can switch paths)."""
    return os.environ.get("MER_BENCH_NATIVE", "1") != "0"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def _cpu_identity() -> str:
    """What `-march=native` depends on: the machine and, on Linux, the CPU's feature flags."""
    ident = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            ident += next((ln for ln in fh if ln.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return ident


def _build(source: Path, cc: str) -> Path:
    """The cached library for `source`, compiled now if absent (with OpenMP if the compiler
    takes it), written atomically so concurrent processes never load a half-written file."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        source.read_bytes() + (HEADERS / "vec.h").read_bytes()
        + "\0".join((cc, version, *FLAGS, *OPENMP, *LIBS, _cpu_identity())).encode()
    ).hexdigest()[:16]
    target = cache_dir() / "native" / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        for extra in (OPENMP, ()):
            done = subprocess.run([cc, *FLAGS, *extra, "-o", tmp, str(source), *LIBS],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                break
        done.check_returncode()
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(source: Path, signatures: dict[str, list]) -> ctypes.CDLL | None:
    """The compiled library of a C source with its functions' argument types set from
    `signatures`, or None (disabled, no compiler, compile error: one line on stderr says so,
    once per process)."""
    if not enabled():
        return None
    if source not in _loaded:
        lib = None
        cc = _compiler()
        try:
            if cc is None:
                raise OSError("no C compiler (cc, gcc or clang) on PATH")
            lib = ctypes.CDLL(str(_build(source, cc)))
            for name, argtypes in signatures.items():
                getattr(lib, name).argtypes = argtypes
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            print(f"mer-bench: {source.name} not compiled ({detail.strip().splitlines()[-1]}); "
                  "using the PyTorch path", file=sys.stderr)
        _loaded[source] = lib
    return _loaded[source]


def run_split(lib: ctypes.CDLL, name: str, args: tuple, blocks: int) -> None:
    """lib.name(*args, b0, b1) over [0, blocks): in one call when the library runs its loops on
    OpenMP threads, else in up to torch.get_num_threads() contiguous ranges on Python threads;
    a non-zero return is an error."""
    fn = getattr(lib, name)
    threads = max(1, min(torch.get_num_threads(), blocks))
    if threads == 1 or _openmp(lib):
        codes = [fn(*args, 0, blocks)]
    else:
        bounds = [blocks * t // threads for t in range(threads + 1)]
        ranges = list(zip(bounds[:-1], bounds[1:]))
        if _pool is None or _pool_size < threads - 1:
            _resize_pool(threads - 1)
        futures = [_pool.submit(fn, *args, b0, b1) for b0, b1 in ranges[1:]]
        codes = [fn(*args, *ranges[0])] + [f.result() for f in futures]
    if any(codes):
        raise RuntimeError(f"native kernel {name} failed (code {max(codes)})")


def _openmp(lib: ctypes.CDLL) -> bool:
    try:
        return bool(lib.native_openmp())
    except AttributeError:  # a library without the probe: split on Python threads
        return False


_pool_size = 0


def _resize_pool(size: int) -> None:
    global _pool, _pool_size
    _pool, _pool_size = ThreadPoolExecutor(size), size
