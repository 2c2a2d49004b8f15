"""Checkpoints stream to disk: no copy of the checkpoint in memory, written behind (on disk and out of the page cache
as they are written), the target replaced only by a complete file on disk, the mode the umask gives, and a writer the
user chose kept."""

import os
import stat
import tracemalloc

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from amused_lightning import write_behind
from amused_lightning.run import checkpoint_file
from amused_lightning.run.checkpoint_file import (
    PARTIAL_NAME,
    StreamingCheckpointIO,
    save_atomically,
    stream_checkpoints,
)

from helpers import fit


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot be saved")


def checkpoint(megabytes: int = 32) -> dict:
    return {"state_dict": {"w": torch.arange(megabytes * 2**18, dtype=torch.float32)}, "global_step": 7}


def python_peak(save) -> int:
    """Peak bytes Python allocated while `save` ran (a BytesIO is counted; tensors' storages are not)."""
    tracemalloc.start()
    try:
        save()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_checkpoint_streams_to_disk_and_loads_back(tmp_path):
    saved, path = checkpoint(), tmp_path / "sub" / "last.ckpt"
    streamed = python_peak(lambda: StreamingCheckpointIO().save_checkpoint(saved, path))
    buffered = python_peak(lambda: TorchCheckpointIO().save_checkpoint(saved, tmp_path / "lightning.ckpt"))
    size = path.stat().st_size
    assert buffered > size, "Lightning's writer holds the checkpoint's bytes in memory"
    assert streamed < size / 8, f"{streamed} bytes held in memory for a {size}-byte checkpoint"
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == 7 and torch.equal(loaded["state_dict"]["w"], saved["state_dict"]["w"])
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "no temporary file is left"


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no page cache advice on this platform")
def test_a_checkpoint_is_put_on_disk_and_out_of_the_cache_as_it_is_written(tmp_path, monkeypatch):
    synced, dropped, folders = [], [], []
    real_fsync = os.fsync
    monkeypatch.setattr(write_behind, "WRITE_BEHIND_BYTES", 1 << 20)
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(os.fstat(fd).st_size), raising=False)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: dropped.append((offset, length,
                                                                                                   advice)))
    monkeypatch.setattr(os, "fsync", lambda fd: folders.append(stat.S_ISDIR(os.fstat(fd).st_mode)) or real_fsync(fd))
    saved = {"state_dict": {f"w{i}": torch.full((2**18,), float(i)) for i in range(8)}}  # eight 1 MB records
    path = tmp_path / "last.ckpt"
    save_atomically(saved, path)
    size = path.stat().st_size
    assert len(synced) >= 8 and synced == sorted(synced) and synced[-1] == size, "on disk every MB, and all of it"
    assert [length for _, length, _ in dropped] == synced and {(o, a) for o, _, a in dropped} == {
        (0, os.POSIX_FADV_DONTNEED)}, "each synced part leaves the cache"
    assert folders == [True], "the new name is put on disk too"
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w7"], saved["state_dict"]["w7"])


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    (tmp_path / PARTIAL_NAME).write_bytes(b"left by a save of another checkpoint that was killed")
    save_atomically(checkpoint(1), path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "the next save replaces what a killed one left"
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot be saved"):
        save_atomically({**checkpoint(1), "global_step": 8, "extra": Unpicklable()}, path)

    def disk_full_halfway(obj, file):
        file.write(b"PK half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_file.torch, "save", disk_full_halfway)
    with pytest.raises(OSError, match="No space left"):
        save_atomically(checkpoint(1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_checkpoint_gets_the_mode_of_the_umask(tmp_path):
    (tmp_path / PARTIAL_NAME).write_bytes(b"left by a killed save")
    (tmp_path / PARTIAL_NAME).chmod(0o600)
    old = os.umask(0o027)
    try:
        save_atomically(checkpoint(1), tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "last.ckpt").stat().st_mode) == 0o640


def test_file_urls_are_local_and_other_filesystems_keep_lightnings_writer(tmp_path):
    import fsspec

    StreamingCheckpointIO().save_checkpoint(checkpoint(1), f"file://{tmp_path}/a/last.ckpt")
    assert torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)["global_step"] == 7
    StreamingCheckpointIO().save_checkpoint(checkpoint(1), "memory://run/last.ckpt")
    with fsspec.open("memory://run/last.ckpt", "rb") as file:
        assert torch.load(file, weights_only=True)["global_step"] == 7


def test_the_default_writer_is_replaced_and_a_chosen_one_kept():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    stream_checkpoints(trainer)
    assert type(trainer.strategy.checkpoint_io) is StreamingCheckpointIO
    chosen = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, plugins=[AsyncCheckpointIO()])
    stream_checkpoints(chosen)
    assert isinstance(chosen.strategy.checkpoint_io, AsyncCheckpointIO)


def test_a_fit_writes_its_checkpoints_through_the_stream_and_releases_the_optimizer_state(tmp_path, toy_dataset):
    cli = fit(tmp_path, toy_dataset, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0")
    assert type(cli.trainer.strategy.checkpoint_io) is StreamingCheckpointIO
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 and saved["optimizer_states"][0]["state"], "the checkpoint holds the moments"
    assert all(not optimizer.state for optimizer in cli.trainer.optimizers), "released before the export"
    assert (tmp_path / "export" / "model_index.json").is_file()
