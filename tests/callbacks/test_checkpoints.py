"""A run folder that was copied or moved keeps writing `last.ckpt`."""

from __future__ import annotations

import shutil

import torch

from amused_lightning.callbacks.checkpoints import relocated

from helpers import fit

QUICK = ("--trainer.limit_val_batches", "0", "--checkpoint.every_n_train_steps", "2")


def test_the_files_of_the_old_folder_are_named_in_the_new_one():
    state = {"dirpath": "/a/checkpoints", "last_model_path": "/a/checkpoints/last.ckpt",
             "best_model_path": "/elsewhere/x.ckpt", "kth_best_model_path": "",
             "best_k_models": {"/a/checkpoints/step=2.ckpt": 2}}
    moved = relocated(state, "/b/checkpoints")
    assert moved["dirpath"] == "/b/checkpoints"
    assert moved["last_model_path"] == "/b/checkpoints/last.ckpt"
    assert moved["best_k_models"] == {"/b/checkpoints/step=2.ckpt": 2}
    assert moved["best_model_path"] == "/elsewhere/x.ckpt" and moved["kth_best_model_path"] == ""
    assert state["dirpath"] == "/a/checkpoints"  # the checkpoint's own dict is left as it was


def test_a_copied_run_resumes_into_its_own_last_ckpt(tmp_path, toy_dataset):
    fit(tmp_path / "a", toy_dataset, "--trainer.max_steps", "2", *QUICK)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    fit(tmp_path / "b", toy_dataset, "--trainer.max_steps", "4", "--ckpt_path", "last", *QUICK)
    checkpoints = tmp_path / "b" / "checkpoints"
    assert sorted(path.name for path in checkpoints.glob("last*.ckpt")) == ["last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 4
    assert torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
