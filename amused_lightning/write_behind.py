"""Large files written straight to disk and dropped from the page cache as they go: checkpoints, exported weights and
the base parts an export copies. They are read back rarely, and on a small machine gigabytes of fresh cache pages
cost more than the disk does (scripts/write_behind_speed.py)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

WRITE_BEHIND_BYTES = 64 << 20
"""How much of a file may wait in the page cache before it is put on disk and dropped from the cache."""

SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
"""The safetensors format's name of each dtype a model's weights and buffers hold."""


class WriteBehindFile(io.FileIO):
    """A binary file that puts what it is given on disk every WRITE_BEHIND_BYTES and then drops it from the page
    cache, so that a save holds at most that much of the cache; `sync` puts the rest on disk."""

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


def safetensors_header(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    """The length-prefixed JSON header of a safetensors file holding `tensors` in name order."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: safetensors has no dtype {tensor.dtype}")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data that follows to 8 bytes
    return len(text).to_bytes(8, "little") + text


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file`, written behind: a file safetensors reads, each tensor's bytes streamed from the
    tensor itself (no copy of the whole file in memory). Tensors that share memory are refused, as safetensors does."""
    storages = [t.untyped_storage().data_ptr() for t in tensors.values() if t.numel()]
    if len(storages) != len(set(storages)):
        raise ValueError(f"{path}: some tensors share memory; give each its own copy (safetensors keeps one per name)")
    with WriteBehindFile(path) as file:
        file.write(safetensors_header(tensors, metadata))
        for name in sorted(tensors):
            tensor = tensors[name].detach().cpu().contiguous()
            if tensor.numel():
                file.write(tensor.reshape(-1).view(torch.uint8).numpy())
        file.sync()
    return path
