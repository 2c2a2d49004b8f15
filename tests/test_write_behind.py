"""Large files written behind: all of what is given, on disk and out of the page cache as it goes; safetensors files
that safetensors reads back exactly; file copies byte for byte."""

import os

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


def test_tensors_that_share_memory_are_refused_as_safetensors_refuses_them(tmp_path):
    weight = torch.randn(4, 4)
    with pytest.raises(ValueError, match="share memory"):
        save_safetensors({"embed": weight, "head": weight}, tmp_path / "tied.safetensors")
    with pytest.raises(ValueError, match="safetensors has no dtype"):
        save_safetensors({"z": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "complex.safetensors")


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
