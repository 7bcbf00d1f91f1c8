"""Restricted loading of MMSA / CIDer / CASP pickles and of checkpoints.

Why: a pickle is a program. `pickle.load` on a downloaded feature file runs whatever the file
asks for, so every data file here goes through an unpickler whose `find_class` admits only the
plain containers, numpy arrays, dtypes and scalars that the MMSA format needs. Anything else is
refused *before* it is called.

CIDer's OOD files are written with `joblib.dump`: a pickle stream in which every numpy array is
replaced by a `NumpyArrayWrapper` record followed by the raw array bytes. We never import or run
joblib's wrapper class; its name maps to an inert local record (`_ArrayRecord`) whose fields are
validated (plain ndarray subclass, non-object or restricted-pickled dtype, sane shape) before the
bytes are read with `numpy.frombuffer`. Old joblib (<= 0.9) `NDArrayWrapper` records point at
side `.npy` files; those load with `numpy.load(allow_pickle=False)` and only from the pickle's
own directory. zlib/gzip/bz2/xz-compressed joblib files are decompressed with the standard
library (joblib's zlib framing is plain zlib).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import pickle
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np

from mer_bench.errors import DataError

try:  # numpy >= 2 keeps the implementation in numpy._core; numpy 1.x in numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

_BUILTINS = {
    name: getattr(__import__("builtins"), name)
    for name in (
        "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
        "int", "float", "complex", "bool", "slice",
    )
}

# (module, name) -> object, for every global an MMSA pickle may reference.
_NUMPY = {
    "_reconstruct": _multiarray._reconstruct,
    "scalar": _multiarray.scalar,
}
ALLOWED: dict[tuple[str, str], Any] = {}
for _mod in ("builtins", "__builtin__"):
    for _name, _obj in _BUILTINS.items():
        ALLOWED[(_mod, _name)] = _obj
# Python 2 / protocol-2 pickles encode `bytes` as `_codecs.encode(str, "latin1")`.
ALLOWED[("_codecs", "encode")] = __import__("codecs").encode
for _core in ("numpy.core", "numpy._core"):
    for _name, _obj in _NUMPY.items():
        ALLOWED[(f"{_core}.multiarray", _name)] = _obj
    # protocol-5 in-band arrays are rebuilt with numeric._frombuffer (a plain buffer view)
    ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _numeric._frombuffer
ALLOWED[("numpy", "ndarray")] = np.ndarray
ALLOWED[("numpy", "dtype")] = np.dtype
ALLOWED[("numpy", "memmap")] = np.ndarray  # only ever named as a joblib record's subclass

_JOBLIB_RECORDS = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("sklearn.externals.joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("joblib.numpy_pickle_compat", "NDArrayWrapper"),
    ("joblib.numpy_pickle", "NDArrayWrapper"),
    ("sklearn.externals.joblib.numpy_pickle", "NDArrayWrapper"),
}
_RECORD_FIELDS = {
    "subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes",
    "filename",
}
_MAX_ELEMENTS = 1 << 40  # refuse absurd shapes before allocating
MAX_RATIO = 200  # decompressed / compressed bytes: features compress far less; a bomb far more
MAX_BYTES = int(os.environ.get("MER_BENCH_MAX_DATA_BYTES", 64 * 2**30))  # any one data file
MAX_NODES = 2_000_000  # containers and items visited (shared references counted each time)
MAX_DEPTH = 32  # MMSA files nest 3 deep


class _ArrayRecord:
    """Inert stand-in for joblib's array wrappers: it only stores validated metadata."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not set(state) <= _RECORD_FIELDS:
            raise pickle.UnpicklingError("unexpected joblib array record fields")
        self.__dict__.update(state)


class _HashingReader(io.RawIOBase):
    """Reads a binary file while feeding every byte to SHA-256 (one pass for load + checksum)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.sha.update(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        data = self._raw.readline(limit)
        self.sha.update(data)
        return data

    def readinto(self, buf) -> int:  # noqa: ANN001 - buffer protocol
        n = self._raw.readinto(buf)
        if n:
            self.sha.update(memoryview(buf)[:n])
        return n or 0

    def drain(self) -> int:
        """Consume (and hash) whatever follows the pickle; return how many bytes that was."""
        extra = 0
        while chunk := self._raw.read(1 << 22):
            self.sha.update(chunk)
            extra += len(chunk)
        return extra


class _RestrictedUnpickler(pickle._Unpickler):  # the Python implementation: BUILD is hookable
    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(self, file: IO[bytes], where: str, directory: Path | None,
                 limit: int = MAX_BYTES) -> None:
        super().__init__(file, encoding="latin1")
        self._where = where
        self._dir = directory
        self._file = file
        self._limit = limit

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _JOBLIB_RECORDS:
            return _ArrayRecord
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._where}: refused to unpickle {module}.{name}: only plain containers, "
                "numbers, strings and numpy arrays are allowed in a data file"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self._where}: refused persistent reference in pickle")

    def load_build(self) -> None:
        pickle._Unpickler.load_build(self)
        if isinstance(self.stack[-1], _ArrayRecord):
            self.stack[-1] = self._read_record(self.stack[-1])

    dispatch[pickle.BUILD[0]] = load_build

    # -------------------------------------------------------------- joblib arrays
    def _read_record(self, rec: _ArrayRecord) -> np.ndarray:
        subclass = getattr(rec, "subclass", np.ndarray)
        if subclass is not np.ndarray:
            raise DataError(f"{self._where}: refused joblib array of subclass {subclass!r}")
        if hasattr(rec, "filename") and not hasattr(rec, "dtype"):
            return self._read_side_npy(str(rec.filename))
        dtype, shape, order = rec.dtype, rec.shape, getattr(rec, "order", "C")
        if not isinstance(dtype, np.dtype) or order not in ("C", "F"):
            raise DataError(f"{self._where}: malformed joblib array record")
        if not isinstance(shape, tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise DataError(f"{self._where}: malformed joblib array shape {shape!r}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count > _MAX_ELEMENTS or count * dtype.itemsize > self._limit:
            raise DataError(
                f"{self._where}: joblib array shape {shape} is larger than the file can hold"
            )
        if dtype.hasobject:
            # joblib writes object arrays as a nested pickle stream: same restrictions apply.
            nested = _RestrictedUnpickler(self._file, self._where, self._dir, self._limit)
            arr = nested.load()
            if not isinstance(arr, np.ndarray):
                raise DataError(f"{self._where}: joblib object array did not decode to an array")
            return arr
        if getattr(rec, "numpy_array_alignment_bytes", None) is not None:
            pad = self.read(1)
            if len(pad) != 1:
                raise EOFError("pickle data was truncated")
            self.read(pad[0])
        arr = np.empty(count, dtype=dtype)
        self._read_into(memoryview(arr).cast("B"))
        if order == "F":
            arr = arr.reshape(shape[::-1]).transpose()
        else:
            arr = arr.reshape(shape)
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr

    def _read_into(self, view: memoryview) -> None:
        """Fill `view` with the raw bytes that follow a joblib record (no intermediate copy)."""
        frame = self._unframer.current_frame
        if frame is not None and frame.tell() < len(frame.getbuffer()):
            data = self.read(len(view))  # array bytes inside a pickle frame (not joblib's layout)
            if len(data) != len(view):
                raise EOFError("pickle data was truncated")
            view[:] = data
            return
        self._unframer.current_frame = None
        got = 0
        while got < len(view):
            n = self._file.readinto(view[got:])
            if not n:
                raise EOFError("pickle data was truncated")
            got += n

    def _read_side_npy(self, filename: str) -> np.ndarray:
        if self._dir is None or os.path.basename(filename) != filename:
            raise DataError(f"{self._where}: refused old-joblib array file {filename!r}")
        try:
            return np.load(self._dir / filename, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{self._where}: cannot read old-joblib array {filename}: {e}") from None


_COMPRESSED = (
    (b"\x1f\x8b", lambda fileobj: gzip.GzipFile(fileobj=fileobj, mode="rb")),
    (b"BZh", lambda fileobj: bz2.BZ2File(fileobj, mode="rb")),
    (b"\xfd7zXZ", lambda fileobj: lzma.LZMAFile(fileobj, mode="rb")),
    (b"\x5d\x00\x00", lambda fileobj: lzma.LZMAFile(fileobj, mode="rb")),
)


class _ZlibReader(io.RawIOBase):
    """Streams a raw zlib stream (joblib's `compress='zlib'` / default `compress=True`)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._z = zlib.decompressobj()
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # noqa: ANN001
        while not self._buf:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                self._buf = self._z.flush()
                if not self._buf:
                    return 0
                break
            self._buf = self._z.decompress(chunk)
        n = min(len(buf), len(self._buf))
        buf[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _Bounded(io.RawIOBase):
    """Passes a decompressed stream through, refusing it once it exceeds `limit` bytes (a
    compressed 'bomb' is stopped before it fills memory)."""

    def __init__(self, raw: IO[bytes], limit: int, where: str) -> None:
        self._raw, self._left, self._where, self._limit = raw, limit, where, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # noqa: ANN001
        n = self._raw.readinto(buf) or 0
        self._left -= n
        if self._left < 0:
            raise DataError(
                f"{self._where}: decompresses to more than {self._limit} bytes "
                f"({MAX_RATIO}x the file, at most {MAX_BYTES}); refused as a compression bomb"
            )
        return n


_CONTAINERS = (dict, list, tuple, set, frozenset, np.ndarray)


def _check_structure(obj: Any, where: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH or more than MAX_NODES items in all (shared
    references are counted at every use, as any consumer walking the object would)."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    seen = 0
    while stack:
        x, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES or depth > MAX_DEPTH:
            what = "nested too deeply" if depth > MAX_DEPTH else f"more than {MAX_NODES} items"
            raise DataError(f"{where}: data structure {what} (shared-reference nesting?)")
        if isinstance(x, dict):
            items = [*x.values(), *x.keys()]
        elif isinstance(x, list | tuple | set | frozenset):
            items = list(x)
        elif isinstance(x, np.ndarray) and x.dtype.hasobject:
            items = x.reshape(-1).tolist()
        else:
            continue
        seen += len(items)  # leaves are counted in bulk; containers are walked
        stack.extend((v, depth + 1) for v in items if isinstance(v, _CONTAINERS))


def _file_size(fh: IO[bytes]) -> int | None:
    try:
        return os.fstat(fh.fileno()).st_size
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None


def _decompressing(f: IO[bytes], head: bytes) -> IO[bytes] | None:
    if head[:2] == b"ZF":
        return None  # joblib < 0.10 zfile format: not supported
    for magic, cls in _COMPRESSED:
        if head.startswith(magic):
            return io.BufferedReader(cls(fileobj=f))  # type: ignore[call-arg]
    if head[:1] == b"\x78":
        return io.BufferedReader(_ZlibReader(f))
    return f


def _load(fh: IO[bytes], where: str, directory: Path | None) -> tuple[Any, str]:
    head = fh.peek(8)[:8] if hasattr(fh, "peek") else b""
    size = _file_size(fh)
    limit = MAX_BYTES if size is None else min(MAX_BYTES, max(MAX_RATIO * size, 1 << 26))
    reader = _HashingReader(fh)
    stream: IO[bytes] = io.BufferedReader(reader, buffer_size=1 << 20)
    if head and head[:1] != b"\x80":
        inner = _decompressing(stream, head)
        if inner is None:
            raise DataError(f"{where}: old joblib 'ZF' compressed files are not supported")
        if inner is not stream:
            inner = io.BufferedReader(_Bounded(inner, limit, where), buffer_size=1 << 20)
        stream = inner
    elif size is not None:
        limit = size  # uncompressed: no array can hold more bytes than the file
    try:
        obj = _RestrictedUnpickler(stream, where, directory, limit).load()
        _check_structure(obj, where)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - only admitted constructs ran: any failure is bad data
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{where}: truncated or corrupt pickle ({msg})") from None
    reader.drain()
    return obj, reader.sha.hexdigest()


def safe_load_with_hash(path_or_file: str | os.PathLike | IO[bytes]) -> tuple[Any, str]:
    """`safe_load` plus the SHA-256 of the raw bytes read (computed in the same pass).

    For a file object the hash covers the bytes from its current position.
    """
    if hasattr(path_or_file, "read"):
        fh = path_or_file  # type: ignore[assignment]
        where = str(getattr(fh, "name", "<stream>"))
        name = getattr(fh, "name", None)
        directory = Path(name).parent if isinstance(name, str) else None
        buffered = fh if hasattr(fh, "peek") else io.BufferedReader(fh)  # type: ignore[arg-type]
        return _load(buffered, where, directory)
    path = Path(path_or_file)  # type: ignore[arg-type]
    try:
        with open(path, "rb") as raw:
            return _load(io.BufferedReader(raw, buffer_size=1 << 20), str(path), path.parent)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a pickle file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None


def safe_load(path_or_file: str | os.PathLike | IO[bytes]) -> Any:
    """Unpickle a data file admitting only containers, numbers, strings and numpy arrays.

    Reads plain pickles (any protocol) and `joblib.dump` files (optionally compressed).
    Raises a one-line `DataError` naming the file for refused globals or corrupt data.
    """
    return safe_load_with_hash(path_or_file)[0]


def safe_torch_load(path: str | os.PathLike) -> Any:
    """`torch.load(weights_only=True)` on CPU: tensors and plain data only, never code."""
    import torch

    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "refused"
        raise DataError(f"{path}: refused to load checkpoint ({first})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: truncated or corrupt checkpoint ({first})") from None
