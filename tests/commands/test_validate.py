"""`validate` of a checkpoint: labelled with the checkpoint's step, in a TensorBoard run of its own, with every
score."""

from __future__ import annotations

from amused_lightning.__main__ import main

from helpers import image_steps, scalars, tiny_fit

PROMPT = ("a pixel art character with square red glasses, a cube-shaped head and a green-colored body on a dark "
          "background")
VALIDATION = ("--model.validation.prompts", f'["{PROMPT}"]', "--model.validation.generation.num_inference_steps", "1",
              "--model.image_metrics", '[{"class_path": "amused_lightning.toy.image_metrics.ToyWorldScore"}]')


def test_validate_labels_its_step_and_leaves_the_fits_logs_whole(tmp_path, toy_dataset, capsys):
    run = tmp_path / "run"
    main(tiny_fit(run, toy_dataset, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", *VALIDATION))
    assert f"exporting step 2 to {run / 'export'}..." in capsys.readouterr().err
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    main(["validate", *tiny_fit(run, toy_dataset, *VALIDATION)[1:], "--ckpt_path", checkpoint])
    out, err = capsys.readouterr()
    assert f"held-out scores of {checkpoint}:" in out and "\nval/toy_accuracy  " in out, out
    assert "validating step 2: held-out scores and 1 image...\n" in err
    assert [p.name for p in (run / "validation").glob("*.png")] == ["step=000002.png"]
    validate_logs = run / "lightning_logs" / "validate"
    assert [step for step, _ in scalars(validate_logs, "val/loss")] == [2]
    assert [step for step, _ in scalars(validate_logs, "val/toy_accuracy")] == [2]
    assert list(image_steps(validate_logs).values()) == [[2]]
    main(tiny_fit(run, toy_dataset, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", *VALIDATION,
                  "--ckpt_path", "last"))
    assert sorted(p.name for p in (run / "lightning_logs").iterdir()) == ["validate", "version_0"]
    assert [step for step, _ in scalars(run / "lightning_logs" / "version_0", "train/loss")] == [0, 1, 2]
