"""Large files written straight to disk and dropped from the page cache as they go: checkpoints, exported weights and
the base parts an export copies. They are read back rarely, and on a small machine gigabytes of fresh cache pages
cost more than the disk does (scripts/write_behind_speed.py)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

WRITE_BEHIND_BYTES = 64 << 20
"""How much of a file may wait in the page cache before it is put on disk and dropped from the cache."""

SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e4m3fnuz: "F8_E4M3FNUZ", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e5m2fnuz: "F8_E5M2FNUZ", torch.complex64: "C64", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint64: "U64", torch.uint32: "U32", torch.uint16: "U16",
    torch.uint8: "U8", torch.bool: "BOOL",
}
"""The safetensors format's name of each dtype it stores."""
SWAP_VIEWS = {2: torch.int16, 4: torch.int32, 8: torch.int64}
"""The integer dtype of each number size, to swap bytes with (on a big-endian host; the format is little-endian)."""


class WriteBehindFile(io.FileIO):
    """A binary file that puts what it is given on disk every WRITE_BEHIND_BYTES and then drops it from the page
    cache, so that a save holds about that much of the cache (plus the piece being written); `sync` puts the rest
    on disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "wb")
        self.unsynced = self.synced = 0

    def write(self, data: Any) -> int:
        """Write all of `data` (a raw write may take only part of it)."""
        view, done = memoryview(data).cast("B"), 0
        while done < len(view):
            done += super().write(view[done:])
        self.unsynced += done
        if self.unsynced >= WRITE_BEHIND_BYTES:
            self.sync()
        return done

    def sync(self) -> None:
        """Put everything written on disk, then let the kernel reuse its cache pages."""
        getattr(os, "fdatasync", os.fsync)(self.fileno())
        self.synced, self.unsynced = self.synced + self.unsynced, 0
        if hasattr(os, "posix_fadvise"):  # Linux and most Unixes; elsewhere the cache keeps the pages
            os.posix_fadvise(self.fileno(), 0, self.synced, os.POSIX_FADV_DONTNEED)


def sync_folder(folder: Path) -> None:
    """Put a folder's entries (a file's new name) on disk; Windows keeps no handle on a folder to sync."""
    if os.name == "posix":
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def copy_behind(source: str | Path, target: str | Path) -> str | Path:
    """Copy a file's bytes through WriteBehindFile (a `copy_function` for shutil.copytree); returns `target`."""
    buffer = memoryview(bytearray(WRITE_BEHIND_BYTES // 8))
    with open(source, "rb", buffering=0) as reader, WriteBehindFile(Path(target)) as writer:
        while count := reader.readinto(buffer):
            writer.write(buffer[:count])
        writer.sync()
    return target


def file_order(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names in the order their bytes go in the file, as safetensors orders them: wider dtypes first, then by name,
    so that each tensor starts at a multiple of its element size."""
    return sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))


def safetensors_header(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    """The length-prefixed JSON header of a safetensors file holding `tensors` in `file_order`."""
    if metadata and not all(isinstance(value, str) for value in metadata.values()):
        raise ValueError(f"safetensors metadata holds only strings, not {metadata}")
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in file_order(tensors):
        tensor = tensors[name]
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: the safetensors format has no dtype {tensor.dtype}")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data that follows to 8 bytes
    return len(text).to_bytes(8, "little") + text


def byte_span(tensor: torch.Tensor) -> tuple[int, int]:
    """The addresses of a tensor's first byte and one past its last element's."""
    last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    return tensor.data_ptr(), tensor.data_ptr() + (last + 1) * tensor.element_size()


def check_no_overlap(tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors whose bytes overlap (one weight under two names), as safetensors does: each name's bytes are
    stored once, and a loader would get two weights where there was one. Separate slices of one storage pass."""
    spans = sorted((*byte_span(t), name) for name, t in tensors.items() if t.numel() and t.device.type != "meta")
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"{first} and {second} share memory; give each its own copy (safetensors stores each "
                             "name's bytes once)")


def little_endian_bytes(tensor: torch.Tensor) -> Any:
    """A contiguous CPU tensor's bytes in the format's byte order (numbers swapped on a big-endian host)."""
    if sys.byteorder == "big" and tensor.element_size() > 1:
        unit = tensor.element_size() // (2 if tensor.is_complex() else 1)
        tensor = torch.from_numpy(tensor.view(SWAP_VIEWS[unit]).numpy().byteswap())
    return tensor.reshape(-1).view(torch.uint8).numpy()


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file`, written behind: a file safetensors reads, each tensor's bytes streamed from the
    tensor itself (no copy of the whole file in memory). Everything is checked before the file is opened."""
    check_no_overlap(tensors)
    header = safetensors_header(tensors, metadata)
    with WriteBehindFile(path) as file:
        file.write(header)
        for name in file_order(tensors):
            tensor = tensors[name].detach().cpu().contiguous()
            if tensor.numel():
                file.write(little_endian_bytes(tensor))
        file.sync()
    return path
