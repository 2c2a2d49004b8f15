import json
import os
import sys

import numpy as np
import pytest
import torch
import yaml
from diffusers import AmusedPipeline, UVit2DModel
from huggingface_hub import ModelCard
from PIL import Image

from amused_lightning.__main__ import main
from amused_lightning.callbacks.ema import find_ema
from amused_lightning.commands.export import main as export_main
from amused_lightning.export.card import CARD_NAME, SAMPLES_NAME
from amused_lightning.export.pipeline import export_run
from amused_lightning.formats import BASE_NAME, LORA_WEIGHT_NAME, SAMPLING_NAME
from amused_lightning.model.adapters import LoraSettings, add_lora
from amused_lightning.model.amused import AmusedModel
from amused_lightning.model.components import load_components
from amused_lightning.model.finetuning import TextEncoderSettings
from amused_lightning.model.spec import ModelSpec
from amused_lightning.run.checkpoint import RunCheckpoint

from helpers import fit, transformer_inputs


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, toy_dataset):
    """A short LoRA (r 4, alpha 8) + EMA run on the tiny preset, validated at step 2 and at its end (step 3), with
    its final export."""
    root = tmp_path_factory.mktemp("lora-run")
    cli = fit(root, toy_dataset, "--trainer.max_steps", "3", "--model.lora.r", "4", "--model.lora.alpha", "8",
              "--model.optimizer.init_args.lr", "0.05", "--ema.enabled", "true", "--ema.decay", "0.5",
              "--validation_steps", "2", "--model.validation.prompts", "[a pixel art character, a red body]",
              "--model.validation.generation.num_inference_steps", "2")
    return root, cli


def test_fit_exports_ema_weights_into_the_run_folder(lora_run):
    root, _ = lora_run
    assert (root / "export" / LORA_WEIGHT_NAME).is_file() and (root / "export" / "model_index.json").is_file()


def test_the_final_export_has_a_card_with_the_runs_facts_and_last_images(lora_run):
    root, cli = lora_run
    text = (root / "export" / CARD_NAME).read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert ModelCard.load(root / "export" / CARD_NAME).data.to_dict() == meta
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-image"
    assert {"text-to-image", "amused", "lora"} <= set(meta["tags"]) and meta["license"] == "other"
    rows = len(cli.datamodule.train_dataset)
    for fact in ("LoRA on the transformer: r 4, alpha 8 (scale alpha / r), targets to_q, to_k, to_v; text encoder "
                 "frozen", "the EMA of the trained weights (decay 0.5), adapters in `pytorch_lora_weights.safetensors`",
                 f"`HFDataset` `{cli.datamodule.source.path}`, {rows} training rows, 32 px", "learning rate 0.05",
                 "4 per device x 1 devices x 1 accumulation = 4", "| steps | 3 optimizer steps |", "| precision | 32",
                 'load_lora_adapter("', "1. a pixel art character\n2. a red body"):
        assert fact in text, fact
    # The export comes after the final validation: its images are those of the exported step.
    assert f"]({SAMPLES_NAME})" in text and "Validation images at optimizer step 3" in text
    assert (root / "export" / SAMPLES_NAME).read_bytes() == (root / "validation" / "step=000003.png").read_bytes()


def test_exported_lora_reloads_with_its_alpha(lora_run, tmp_path):
    root, cli = lora_run
    module = cli.model
    export_main([str(root / "checkpoints" / "last.ckpt"), str(tmp_path), "--weights", "trained"])
    fresh = load_components("tiny").transformer
    fresh.load_lora_adapter(str(tmp_path), prefix="transformer", weight_name=LORA_WEIGHT_NAME)
    inputs = transformer_inputs()
    with torch.no_grad():
        expected, actual = module.model.transformer(**inputs), fresh(**inputs)
        base = load_components("tiny").transformer(**inputs)
    assert (expected - base).abs().max() > 1e-4, "the adapter must have learned something"
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()


def test_exported_pipeline_loads_and_generates(lora_run, tmp_path):
    root, cli = lora_run
    module = cli.model
    export_main([str(root / "checkpoints" / "last.ckpt"), str(tmp_path), "--merge-lora", "--weights", "ema"])
    assert not (tmp_path / LORA_WEIGHT_NAME).exists(), "merged weights must not come with a LoRA file to re-apply"
    pipe = AmusedPipeline.from_pretrained(str(tmp_path))
    image = pipe("a pixel art character", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="pil").images[0]
    assert image.size == (64, 64)
    merged = UVit2DModel.from_pretrained(str(tmp_path / "transformer"))
    inputs = transformer_inputs(1)
    with find_ema(cli.trainer).average.swapped_in(module.model), torch.no_grad():
        expected = module.model.transformer(**inputs)
    assert torch.allclose(merged(**inputs), expected, atol=1e-5)


def test_export_refuses_an_existing_export_and_keeps_other_files(lora_run, tmp_path):
    root, _ = lora_run
    (tmp_path / "notes.txt").write_text("mine")
    export_main([str(root / "checkpoints" / "last.ckpt"), str(tmp_path)])
    stamp = (tmp_path / "model_index.json").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already holds an export"):
        export_main([str(root / "checkpoints" / "last.ckpt"), str(tmp_path)])
    assert (tmp_path / "model_index.json").stat().st_mtime_ns == stamp
    export_main([str(root / "checkpoints" / "last.ckpt"), str(tmp_path), "--overwrite"])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_rejects_foreign_checkpoints(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not an amused_lightning checkpoint"):
        export_main([str(tmp_path / "other.ckpt"), str(tmp_path / "out")])
    (tmp_path / "junk.ckpt").write_text("junk")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        export_main([str(tmp_path / "junk.ckpt"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_missing_bitsandbytes_is_reported_at_parse_time(monkeypatch, capsys):
    for name in [n for n in sys.modules if n == "bitsandbytes" or n.startswith("bitsandbytes.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.optimizer", "bitsandbytes.optim.AdamW8bit", "--data.source", "SingleImage",
              "--data.source.path", "x.png"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and 'Parser key "model.optimizer"' in error and "bitsandbytes" in error


def test_export_and_generate_never_build_the_training_module(lora_run, tmp_path, monkeypatch):
    from amused_lightning.commands.generate import main as generate_main
    from amused_lightning.training.module import AmusedModule

    root, _ = lora_run
    monkeypatch.setattr(AmusedModule, "__init__", lambda *args, **kwargs: pytest.fail("built the LightningModule"))
    export_main([str(root / "checkpoints" / "last.ckpt"), str(tmp_path / "export")])
    paths = generate_main(["a pixel art character", "-o", str(tmp_path / "png"), "--steps", "2", "--checkpoint",
                           str(root / "checkpoints" / "last.ckpt")])
    assert (tmp_path / "export" / "model_index.json").is_file() and paths[0].is_file()


def card_code(card_text: str) -> str:
    """The Python block of a model card's Use section."""
    return card_text.split("## Use")[1].split("```python\n")[1].split("```")[0]


def test_the_cards_code_run_verbatim_draws_its_samples(lora_run, tmp_path, monkeypatch):
    root, _ = lora_run
    export = root / "export"
    code = card_code((export / CARD_NAME).read_text())
    sampling = json.loads((export / SAMPLING_NAME).read_text())
    assert sampling["generation"]["num_inference_steps"] == 2 and sampling["seed"] == 0
    assert "num_inference_steps=2, guidance_scale=10.0, temperature=(2.0, 0.0)" in code
    monkeypatch.chdir(tmp_path)
    exec(code, {})
    drawn, samples = np.asarray(Image.open(tmp_path / SAMPLES_NAME)), np.asarray(Image.open(export / SAMPLES_NAME))
    assert drawn.shape == samples.shape
    assert np.abs(drawn.astype(int) - samples.astype(int)).max() <= 1


def test_an_unmerged_export_on_a_nameable_base_holds_only_the_adapters(lora_run, tmp_path):
    from amused_lightning.commands.generate import main as generate_main

    root, _ = lora_run
    base = tmp_path / "tiny-base"
    AmusedModel.from_spec(ModelSpec("tiny")).save_pretrained(base)
    run = RunCheckpoint.read(root / "checkpoints" / "last.ckpt")
    run.hparams = {**run.hparams, "pretrained": str(base)}
    export_run(run, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [LORA_WEIGHT_NAME, BASE_NAME, SAMPLING_NAME, CARD_NAME])
    card = (tmp_path / "out" / CARD_NAME).read_text()
    assert f'AmusedPipeline.from_pretrained("{base}")  # the base model' in card
    assert json.loads((tmp_path / "out" / BASE_NAME).read_text())["pretrained"] == str(base)
    common = ["a pixel art character", "--steps", "2", "--resolution", "32"]
    from_export = generate_main([*common, "-o", str(tmp_path / "a"), "--pipeline", str(tmp_path / "out")])
    from_checkpoint = generate_main([*common, "-o", str(tmp_path / "b"), "--checkpoint",
                                     str(root / "checkpoints" / "last.ckpt")])
    difference = np.asarray(Image.open(from_export[0])).astype(int) - np.asarray(Image.open(from_checkpoint[0]))
    assert np.abs(difference).max() <= 1
    export_run(run, tmp_path / "whole", with_base=True)
    assert (tmp_path / "whole" / "model_index.json").is_file() and not (tmp_path / "whole" / BASE_NAME).exists()


def test_exported_files_follow_the_umask(lora_run, tmp_path):
    root, _ = lora_run
    previous = os.umask(0o022)
    try:
        export_main([str(root / "checkpoints" / "last.ckpt"), str(tmp_path / "out")])
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777)
             for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert set(modes.values()) == {"0o644"}, modes


def weight_files(folder, part):
    return {path.name: path.read_bytes() for path in (folder / part).iterdir()}


def test_parts_an_export_leaves_as_the_base_has_them_are_its_files_byte_for_byte(tmp_path, toy_dataset):
    base = tmp_path / "base"
    parts = load_components("tiny")
    AmusedPipeline(vqvae=parts.vqvae, tokenizer=parts.tokenizer, text_encoder=parts.text_encoder,
                   transformer=parts.transformer, scheduler=parts.scheduler).save_pretrained(
        base, safe_serialization=False)  # files a re-serialisation (safetensors) would not write
    fit(tmp_path / "run", toy_dataset, "--model.pretrained", str(base), "--trainer.max_steps", "2",
        "--trainer.limit_val_batches", "0", "--model.lora.r", "4", "--model.optimizer.init_args.lr", "0.05")
    unmerged = tmp_path / "unmerged"
    export_main([str(tmp_path / "run" / "checkpoints" / "last.ckpt"), str(unmerged), "--with-base"])
    export_main([str(tmp_path / "run" / "checkpoints" / "last.ckpt"), str(tmp_path / "merged"), "--merge-lora"])
    for part in ("vqvae", "text_encoder", "transformer"):
        assert weight_files(unmerged, part) == weight_files(base, part), f"{part}: an adapter's base never trains"
    assert weight_files(tmp_path / "merged", "vqvae") == weight_files(base, "vqvae")
    assert weight_files(tmp_path / "merged", "transformer") != weight_files(base, "transformer"), "merged: rewritten"
    adapted = UVit2DModel.from_pretrained(str(unmerged / "transformer"))
    adapted.load_lora_adapter(str(unmerged), prefix="transformer", weight_name=LORA_WEIGHT_NAME)
    merged = UVit2DModel.from_pretrained(str(tmp_path / "merged" / "transformer"))
    inputs = transformer_inputs(1)
    with torch.no_grad():
        assert torch.allclose(adapted(**inputs), merged(**inputs), atol=1e-5), "the copied base carries the adapter"


@pytest.mark.parametrize("lora, text_encoder, merge, unchanged", [
    (None, TextEncoderSettings(), False, {"vqvae", "text_encoder"}),
    (LoraSettings(r=4, alpha=8), TextEncoderSettings(), False, {"vqvae", "text_encoder", "transformer"}),
    (LoraSettings(r=4, alpha=8), TextEncoderSettings(), True, {"vqvae", "text_encoder"}),
    (None, TextEncoderSettings(train=True), False, {"vqvae"}),
])
def test_the_parts_an_export_may_copy_follow_the_finetuning_mode(lora, text_encoder, merge, unchanged):
    model = AmusedModel.from_spec(ModelSpec("tiny", lora=lora, text_encoder=text_encoder))
    assert model.unchanged_parts(merge) == unchanged
    add_lora(model.text_encoder, LoraSettings(r=2, alpha=2, target_modules=["q_proj"]))
    assert "text_encoder" not in model.unchanged_parts(merge), "adapters the spec does not know change the part"
