"""Large files written behind: all of what is given, on disk and out of the page cache as it goes; safetensors files
that safetensors reads back exactly; file copies byte for byte."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from amused_lightning import write_behind
from amused_lightning.write_behind import WriteBehindFile, copy_behind, save_safetensors


def test_write_behind_writes_all_it_is_given(tmp_path):
    pieces = [b"header", memoryview(torch.arange(1000, dtype=torch.int16).numpy()), bytearray(b"end")]
    with WriteBehindFile(tmp_path / "f") as file:
        assert [file.write(piece) for piece in pieces] == [6, 2000, 3]
        file.sync()
    assert (tmp_path / "f").read_bytes() == b"header" + bytes(pieces[1]) + b"end"


def tensors() -> dict[str, torch.Tensor]:
    """Every kind of tensor a model's state holds: several dtypes, a scalar, an empty one, a strided view."""
    generator = torch.Generator().manual_seed(0)
    wide = torch.randn(6, 8, generator=generator)
    return {"z.weight": torch.randn(4, 3, generator=generator), "a.half": torch.randn(5, generator=generator).half(),
            "a.bf16": torch.randn(3, 2, generator=generator).bfloat16(), "ids": torch.arange(7),
            "mask": torch.tensor([True, False, True]), "scale": torch.tensor(2.5), "empty": torch.zeros(0, 4),
            "strided": wide[:, ::2], "bytes": torch.arange(9, dtype=torch.uint8)}


def test_a_safetensors_file_written_behind_reads_back_as_safetensors_own(tmp_path):
    given = tensors()
    save_safetensors(given, tmp_path / "ours.safetensors", {"format": "pt"})
    save_file({name: t.contiguous() for name, t in given.items()}, tmp_path / "theirs.safetensors", {"format": "pt"})
    ours, theirs = load_file(tmp_path / "ours.safetensors"), load_file(tmp_path / "theirs.safetensors")
    assert ours.keys() == theirs.keys() == given.keys()
    for name, tensor in given.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name
    with safe_open(tmp_path / "ours.safetensors", "pt") as file:
        assert file.metadata() == {"format": "pt"}


def test_each_tensor_starts_at_a_multiple_of_its_element_size(tmp_path):
    save_safetensors(tensors(), tmp_path / "w.safetensors")
    with open(tmp_path / "w.safetensors", "rb") as file:
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
    assert (8 + length) % 8 == 0, "the data starts 8-byte aligned"
    for name, entry in header.items():
        assert entry["data_offsets"][0] % tensors()[name].element_size() == 0, name


def test_what_safetensors_cannot_hold_is_refused_before_a_file_is_written(tmp_path):
    weight, path = torch.randn(4, 4), tmp_path / "w.safetensors"
    with pytest.raises(ValueError, match="embed and head share memory"):
        save_safetensors({"embed": weight, "head": weight}, path)
    with pytest.raises(ValueError, match="share memory"):
        save_safetensors({"all": weight, "row": weight[1]}, path)
    with pytest.raises(ValueError, match="no dtype torch.complex128"):
        save_safetensors({"z": torch.zeros(2, dtype=torch.complex128)}, path)
    with pytest.raises(ValueError, match="only strings"):
        save_safetensors({"w": weight}, path, {"format": 1})
    assert not path.exists()


def test_separate_slices_of_one_storage_are_saved_as_safetensors_saves_them(tmp_path):
    flat = torch.arange(8.0)
    save_safetensors({"low": flat[:4], "high": flat[4:]}, tmp_path / "w.safetensors")
    back = load_file(tmp_path / "w.safetensors")
    assert torch.equal(back["low"], flat[:4]) and torch.equal(back["high"], flat[4:])


def test_numbers_are_written_little_endian_on_a_big_endian_host(tmp_path, monkeypatch):
    values = torch.tensor([1.0, -2.5, 3.25])
    monkeypatch.setattr(sys, "byteorder", "big")  # this host is little-endian: its bytes must then be swapped
    save_safetensors({"x": values}, tmp_path / "w.safetensors")
    monkeypatch.undo()
    data = (tmp_path / "w.safetensors").read_bytes()[-12:]
    assert data == np.array([1.0, -2.5, 3.25], dtype=">f4").tobytes(), "swapped, as a big-endian host would need"


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no page cache advice on this platform")
def test_weights_and_copies_are_put_on_disk_and_out_of_the_cache_as_they_are_written(tmp_path, monkeypatch):
    synced, dropped = [], []
    monkeypatch.setattr(write_behind, "WRITE_BEHIND_BYTES", 1 << 20)
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(os.fstat(fd).st_size), raising=False)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: dropped.append(length))
    weights = {f"w{i}": torch.full((2**18,), float(i)) for i in range(6)}  # six 1 MB tensors
    save_safetensors(weights, tmp_path / "w.safetensors")
    size = (tmp_path / "w.safetensors").stat().st_size
    assert len(synced) >= 6 and synced[-1] == size and dropped == synced, "on disk every MB, and out of the cache"
    synced.clear(), dropped.clear()
    assert copy_behind(tmp_path / "w.safetensors", tmp_path / "copy") == tmp_path / "copy"
    assert len(synced) >= 6 and synced[-1] == size and dropped == synced
    assert (tmp_path / "copy").read_bytes() == (tmp_path / "w.safetensors").read_bytes()
    assert torch.equal(load_file(tmp_path / "copy")["w5"], weights["w5"])


def test_an_empty_file_is_copied(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    copy_behind(tmp_path / "empty", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b""
