"""Arrays that live on disk, not in RAM: a run's preprocessed photos and the features its head learns from.

Training memory must not grow with the collection, so every per-photo array of a run (uint8 photos at the
model's size, float16 features of each view) is an ``.npy`` file written row by row and read back a batch at a
time with ordinary reads (not a memory map, whose touched pages would count against the process)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np


#: The fixed length of every file's ``.npy`` header (a multiple of 64, as the format asks).
HEADER_BYTES = 256


class DiskArray:
    """An ``(n, *row_shape)`` array in an ``.npy`` file: appended row batches, read by slices or row indices."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype) -> None:
        self.path = Path(path)
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self._rows = 0
        self._header = 0
        self._file = None
        self._out = None

    # -- writing -------------------------------------------------------------------------------------------

    @classmethod
    @contextmanager
    def create(cls, path: Path, row_shape: tuple[int, ...], dtype) -> Iterator["DiskArray"]:
        """A new file at ``path``, open for :meth:`append` inside the ``with`` block, readable after it."""
        array = cls(path, row_shape, dtype)
        with open(array.path, "wb") as out:
            out.write(array._npy_header(0))  # rewritten with the row count at the end (same length)
            array._header, array._out = out.tell(), out
            try:
                yield array
            finally:
                array._out = None
            out.seek(0)
            out.write(array._npy_header(array._rows))

    def append(self, batch: np.ndarray) -> None:
        """Add rows ``(k, *row_shape)`` at the end (only inside :meth:`create`)."""
        batch = np.ascontiguousarray(batch, dtype=self.dtype)
        if batch.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {batch.shape[1:]} for an array of {self.row_shape}")
        self._out.write(batch.tobytes())
        self._rows += len(batch)

    @classmethod
    def write(cls, path: Path, batches: Iterable[np.ndarray], row_shape: tuple[int, ...], dtype) -> "DiskArray":
        """A new file at ``path`` holding the rows of ``batches`` in order (each ``(k, *row_shape)``)."""
        with cls.create(path, row_shape, dtype) as array:
            for batch in batches:
                array.append(batch)
        return array

    def _npy_header(self, rows: int) -> bytes:
        """The ``.npy`` v1 header for ``rows`` rows, padded to a fixed length so it can be rewritten in place."""
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (rows, *self.row_shape)}
        text = repr(header).encode("latin1")
        text += b" " * (HEADER_BYTES - 10 - len(text) - 1) + b"\n"  # magic (8) + length (2) + text
        return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text

    # -- reading -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._rows

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._rows, *self.row_shape)

    def _reader(self):
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)
        return self._file

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` (a copy in memory)."""
        stop = self._rows if stop is None else min(stop, self._rows)
        count = max(0, stop - start)
        out = np.empty((count, *self.row_shape), dtype=self.dtype)
        if count:
            got = os.preadv(self._reader().fileno(), [memoryview(out).cast("B")],
                            self._header + start * self.row_bytes)
            if got != count * self.row_bytes:
                raise OSError(f"{self.path}: short read ({got} of {count * self.row_bytes} bytes)")
        return out

    def take(self, indices: Iterable[int]) -> np.ndarray:
        """The rows at ``indices``, in that order."""
        indices = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        out = np.empty((len(indices), *self.row_shape), dtype=self.dtype)
        fd = self._reader().fileno()
        for position, index in enumerate(indices):
            if not 0 <= index < self._rows:
                raise IndexError(f"row {index} of {self._rows}")
            os.preadv(fd, [memoryview(out[position]).cast("B")], self._header + int(index) * self.row_bytes)
        return out

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Every row, ``size`` at a time."""
        for start in range(0, self._rows, size):
            yield self.read(start, start + size)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

