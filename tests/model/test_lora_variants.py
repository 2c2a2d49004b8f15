"""DoRA and rsLoRA: trained and checkpointed like LoRA; an unmerged export loads into diffusers exactly where diffusers
can load it (the transformer's DoRA, rsLoRA anywhere), a merged export always does."""

import re

import pytest
import torch
from diffusers import UVit2DModel
from transformers import CLIPTextModelWithProjection

from amused_lightning.commands.export import main as export_main
from amused_lightning.export.card import CARD_NAME
from amused_lightning.model.adapters import LoraSettings, TextEncoderLoraSettings
from amused_lightning.model.amused import AmusedModel
from amused_lightning.model.finetuning import TextEncoderSettings
from amused_lightning.model.spec import ModelSpec
from amused_lightning.run.checkpoint import FORMAT, MARK
from amused_lightning.training.optim import parameter_groups
from amused_lightning.training.resume import check_resume_settings

from helpers import fit, transformer_inputs

TOKENS = torch.randint(0, 514, (2, 77), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def variant_run(tmp_path_factory, toy_dataset):
    """2 steps of DoRA + rsLoRA on the transformer and rsLoRA on the text encoder, with the final (unmerged) export."""
    root = tmp_path_factory.mktemp("variant-run")
    cli = fit(root, toy_dataset, "--trainer.max_steps", "2", "--model.optimizer.init_args.lr", "0.05",
              "--model.lora.r", "4", "--model.lora.alpha", "8", "--model.lora.use_dora", "true",
              "--model.lora.use_rslora", "true", "--model.text_encoder.train", "true",
              "--model.text_encoder.lora.r", "2", "--model.text_encoder.lora.alpha", "4",
              "--model.text_encoder.lora.use_rslora", "true", "--trainer.limit_val_batches", "0")
    return root, cli.model


def outputs(transformer, text_encoder) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return transformer(**transformer_inputs()), text_encoder(TOKENS).text_embeds


def test_the_card_code_loads_dora_and_rslora_into_diffusers_exactly(variant_run):
    root, module = variant_run
    state = torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert any("lora_magnitude_vector" in key for key in state), "DoRA's magnitudes train and are checkpointed"
    code = re.search(r"```python\n(.*?)```", (root / "export" / CARD_NAME).read_text(), re.DOTALL).group(1)
    namespace = {}
    # The card's own lines up to drawing: AmusedPipeline, load_lora_adapter, the text-encoder loader.
    exec(code.split("image = pipe(")[0], namespace)
    pipe = namespace["pipe"]
    expected = outputs(module.model.transformer, module.model.text_encoder)
    base = outputs(*(type(m).from_pretrained(str(root / "export" / n)) for m, n in
                     ((module.model.transformer, "transformer"), (module.model.text_encoder, "text_encoder"))))
    for ours, theirs, before in zip(expected, outputs(pipe.transformer, pipe.text_encoder), base):
        assert (ours - before).abs().max() > 1e-4, "the adapters must have learned something"
        assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()


def test_a_merged_export_of_dora_and_rslora_is_exact(variant_run, tmp_path):
    root, module = variant_run
    export_main([str(root / "checkpoints" / "last.ckpt"), str(tmp_path), "--merge-lora"])
    merged = outputs(UVit2DModel.from_pretrained(str(tmp_path / "transformer")),
                     CLIPTextModelWithProjection.from_pretrained(str(tmp_path / "text_encoder")))
    for ours, theirs in zip(outputs(module.model.transformer, module.model.text_encoder), merged):
        assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()


def text_encoder_dora_checkpoint(path) -> tuple[dict, torch.nn.Module]:
    """A checkpoint of tiny with a trained-looking text-encoder DoRA adapter (no fit), and that text encoder."""
    lora = TextEncoderLoraSettings(r=2, alpha=4, use_dora=True)
    parts = AmusedModel.from_spec(ModelSpec("tiny", text_encoder=TextEncoderSettings(train=True, lora=lora)))
    generator = torch.Generator().manual_seed(1)
    # The transformer trains fully (no model.lora): its weights are in the checkpoint too, as they are.
    trained = {f"{prefix}.{name}": param for prefix in ("transformer", "text_encoder")
               for name, param in getattr(parts, prefix).named_parameters() if param.requires_grad}
    with torch.no_grad():
        for name, param in trained.items():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05 * name.startswith("text_encoder."))
    checkpoint = {"hyper_parameters": {"pretrained": "tiny", "lora": None,
                                       "text_encoder": {"train": True, "lora": vars(lora)}},
                  "state_dict": {name: param.detach().clone() for name, param in trained.items()},
                  MARK: {"format": FORMAT}}
    torch.save(checkpoint, path)
    return checkpoint, parts.text_encoder


def test_text_encoder_dora_is_exported_merged_only(tmp_path):
    _, text_encoder = text_encoder_dora_checkpoint(tmp_path / "dora.ckpt")
    with pytest.raises(ValueError, match="diffusers cannot load a text-encoder DoRA adapter .* --merge-lora"):
        export_main([str(tmp_path / "dora.ckpt"), str(tmp_path / "unmerged")])
    assert not (tmp_path / "unmerged").exists(), "refused before anything is written"
    export_main([str(tmp_path / "dora.ckpt"), str(tmp_path / "merged"), "--merge-lora"])
    merged = CLIPTextModelWithProjection.from_pretrained(str(tmp_path / "merged" / "text_encoder"))
    with torch.no_grad():
        ours, theirs = text_encoder(TOKENS).text_embeds, merged(TOKENS).text_embeds
    assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()


def test_resume_refuses_a_changed_variant_and_reads_older_checkpoints():
    lora = vars(LoraSettings(r=4))
    old = {"pretrained": "tiny", "seed": 0, "lora": {**lora, "use_dora": True}, "text_encoder": {"train": False}}
    with pytest.raises(ValueError, match="model.lora.use_dora changed on resume: True -> False"):
        check_resume_settings(old, {**old, "lora": lora}, "x.ckpt")
    text = {"train": True, "lora": vars(TextEncoderLoraSettings())}
    with pytest.raises(ValueError, match="model.text_encoder.lora.use_rslora changed on resume: False -> True"):
        check_resume_settings({**old, "text_encoder": text},
                              {**old, "text_encoder": {"train": True, "lora": {**text["lora"], "use_rslora": True}}},
                              "x.ckpt")
    before_the_variants = {key: value for key, value in lora.items() if key not in ("use_dora", "use_rslora")}
    assert check_resume_settings({**old, "lora": before_the_variants}, {**old, "lora": lora}, "x.ckpt") == []


def test_dora_magnitudes_get_no_weight_decay(variant_run):
    _, module = variant_run
    decayed, exempt = parameter_groups([module.model.transformer, module.model.text_encoder],
                                       module.model.spec.finetuning.no_decay)
    magnitudes = {id(p) for name, p in module.named_parameters() if "lora_magnitude_vector" in name}
    assert magnitudes and magnitudes <= {id(p) for p in exempt["params"]}
    assert not magnitudes & {id(p) for p in decayed["params"]}
