"""A newcomer's first hour: one-line errors, quiet start, progress in steps, resume that appends, printed results."""

import io
import logging
import os
import subprocess
import sys

import pytest

from amused_lightning.__main__ import main
from amused_lightning.commands.console import Console, take_switches
from amused_lightning.progress import PartsSummary, Printer, RunningMean, progress_line
from amused_lightning.quiet import silence_harmless_messages
from amused_lightning.training.module import AmusedModule

from helpers import REPO, fails_with, scalars, tiny_fit


def command(*argv: str) -> subprocess.CompletedProcess:
    """`python -m amused_lightning ARGV` as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "amused_lightning", *argv], capture_output=True, text=True, env=env)


def test_help_is_instant_and_a_parse_error_is_one_line():
    for argv in (["--help"], ["generate", "--help"], ["export", "--help"]):
        probe = (f"import sys; from amused_lightning.__main__ import main\ntry: main({argv})\nexcept SystemExit: pass"
                 "\nprint('torch' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
        assert out.strip().endswith("False"), f"{argv} imports no torch"
    result = command("fit", "--trainer.max_stepz", "3")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: --trainer.max_stepz is no setting; did you mean --trainer.max_steps or --trainer.max_time? "
        "(see `python -m amused_lightning fit --help`)"]


def test_user_mistakes_end_with_one_line(tmp_path, toy_dataset, capsys):
    line = fails_with(capsys, *tiny_fit(tmp_path, toy_dataset, "--model.objective.min_masking_rate", "2"))
    assert "model.objective.min_masking_rate=2.0 must lie in [0, 1]" in line
    assert "no such folder" in fails_with(capsys, *tiny_fit(tmp_path, toy_dataset, "--model.pretrained", "./nope"))
    line = fails_with(capsys, *tiny_fit(tmp_path, toy_dataset, "--data.source.path", "data/not-made-yet"))
    assert "data.source.path='data/not-made-yet'" in line and "as no folder" in line and "not-made-yet' exists" in line
    line = fails_with(capsys, *tiny_fit(tmp_path, toy_dataset, "--data.source.path", "./data/not-made-yet"))
    assert line.startswith("error: data.source.path='./data/not-made-yet': no such folder")
    line = fails_with(capsys, *tiny_fit(tmp_path, toy_dataset, "--ckpt_path", "nope.ckpt"))
    assert "ckpt_path='nope.ckpt': no such checkpoint file" in line
    assert "ema.enabled is false" in fails_with(capsys, *tiny_fit(tmp_path, toy_dataset, "--ema.decay", "0.9"))
    assert "does not exist" in fails_with(capsys, "export", str(tmp_path / "nope.ckpt"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="must lie in"):  # --debug: the traceback, as a plain exception
        main(["--debug", *tiny_fit(tmp_path, toy_dataset, "--model.objective.min_masking_rate", "2")])


def test_switches_are_taken_anywhere_before_a_double_dash(monkeypatch):
    monkeypatch.delenv("AMUSED_LIGHTNING_VERBOSITY", raising=False)
    monkeypatch.setenv("AMUSED_LIGHTNING_DEBUG", "1")
    assert take_switches(["fit", "-q", "--config", "x", "--", "-v"]) == (Console("quiet", True),
                                                                         ["fit", "--config", "x", "--", "-v"])


def test_harmless_messages_are_dropped_by_their_text_only(caplog):
    silence_harmless_messages()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.INFO):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: no module. Please make sure")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_frozen_parts_are_in_eval_mode_from_the_start():
    module = AmusedModule("tiny")
    model = module.model
    assert model.transformer.training and not model.vqvae.training and not model.text_encoder.training


def test_progress_lines_count_optimizer_steps():
    stream = io.StringIO()  # not a terminal: plain lines
    printer = Printer(stream, plain_interval=3600)
    printer.update(progress_line("step", 1, 300, None, "loss 9.0000"), force=True)
    printer.update(progress_line("step", 120, 300, 1.5, "loss 2.9130"))  # within the interval: not shown
    printer.update(progress_line("step", 120, 300, 1.5, "loss 2.9130"), force=True)
    assert stream.getvalue().splitlines() == ["step 1/300  loss 9.0000",
                                              "step 120/300  loss 2.9130  1.50 steps/s  2:00 left"]


def test_the_progress_line_shows_a_running_mean_of_the_loss():
    mean = RunningMean(window=3)
    assert mean.text("loss") == ""
    for value in (1.0, 2.0, 3.0, 6.0):
        mean.add(value)
    assert mean.text("loss") == "loss 3.6667 (3-step mean)"


def test_the_model_summary_has_no_column_of_zero_flops(caplog):
    columns = [(" ", ["0"]), ("Name", ["model"]), ("Type", ["AmusedModel"]), ("Params", ["1.2 M"]),
               ("Mode", ["train"]), ("FLOPs", ["0"])]
    with caplog.at_level(logging.INFO, logger="amused_lightning"):
        PartsSummary.summarize(columns, 1_200_000, 300_000, 4.8, {"train": 3, "eval": 9}, 0)
    (table,) = caplog.messages
    assert "AmusedModel" in table and "Trainable params" in table
    assert "FLOPs" not in table and "Flops" not in table


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, toy_dataset):
    """A finished 2-step full-finetuning run with its export, driven through the command table with progress on."""
    root = tmp_path_factory.mktemp("first-hour")
    main(tiny_fit(root, toy_dataset, "--trainer.max_steps", "2", "--validation_steps", "2",
                  "--checkpoint.every_n_train_steps", "1"))
    return root


def test_fit_shows_steps_and_resume_appends_to_the_run(finished_run, toy_dataset, capsys):
    # A run that starts here shows its steps out of max_steps (stderr is not a terminal under pytest).
    root = finished_run.parent / "progress-run"
    main(tiny_fit(root, toy_dataset, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"))
    err = capsys.readouterr().err
    assert "step 1/2  loss " in err and "step 2/2  loss " in err and " (2-step mean)" in err, err
    export = finished_run / "export" / "model_index.json"
    stamp, validated = export.stat().st_mtime_ns, scalars(finished_run, "val/loss")
    resume = ("--checkpoint.every_n_train_steps", "1", "--ckpt_path", "last")
    main(tiny_fit(finished_run, toy_dataset, "--trainer.max_steps", "2", *resume))
    assert scalars(finished_run, "val/loss") == validated, "a finished run resumed re-validates nothing"
    main(tiny_fit(finished_run, toy_dataset, "--trainer.max_steps", "3", *resume))
    assert [p.name for p in (finished_run / "lightning_logs").iterdir()] == ["version_0"]
    assert [step for step, _ in scalars(finished_run, "train/loss")] == [0, 1, 2]
    assert [step for step, _ in scalars(finished_run, "val/loss")] == [2, 3]
    assert export.stat().st_mtime_ns == stamp, "the export is kept without export.overwrite"
    assert "already holds an export: it is kept" in capsys.readouterr().err


def test_validate_prints_scores_and_generate_prints_paths(finished_run, toy_dataset, tmp_path, capsys):
    checkpoint = str(finished_run / "checkpoints" / "step=2.ckpt")
    main(["validate", "--trainer.default_root_dir", str(tmp_path / "v"), "--trainer.accelerator", "cpu",
          "--model.pretrained", "tiny", "--data.source", "HFDataset", "--data.source.path", str(toy_dataset),
          "--data.resolution", "32", "--data.batch_size", "4", "--trainer.enable_progress_bar", "false",
          "--ckpt_path", checkpoint])
    out = capsys.readouterr().out
    assert f"held-out scores of {checkpoint}:" in out and "\nmean " in out and "\n25 " in out, out
    main(["generate", "a cat", "a dog", "--checkpoint", checkpoint, "-o", str(tmp_path / "pics"), "--steps", "1",
          "--resolution", "32"])
    written = sorted((tmp_path / "pics").iterdir())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sampling: 1 steps, guidance 10, ") and f"settings in {checkpoint}" in lines[0]
    assert lines[1:] == [f"wrote {path}" for path in written] and len(written) == 2


def test_options_that_do_not_apply_are_refused(finished_run, tmp_path, capsys):
    checkpoint = str(finished_run / "checkpoints" / "last.ckpt")
    line = fails_with(capsys, "export", checkpoint, str(tmp_path / "out"), "--merge-lora")
    assert "--merge-lora is set but this run trained no LoRA adapter" in line
    line = fails_with(capsys, "generate", "a cat", "--checkpoint", checkpoint, "-o", str(tmp_path), "--weights", "ema")
    assert "kept no EMA" in line
