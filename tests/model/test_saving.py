"""An export's parts on disk: a diffusers model's files as its own `save_pretrained` writes them (split into shards
past the shard size), and trained weights taken into a loaded model without copying where they can be."""

import json

import torch
from diffusers import UVit2DModel, VQModel

from amused_lightning.model import saving
from amused_lightning.model.amused import load_weights
from amused_lightning.model.components import load_components
from amused_lightning.model.saving import save_diffusers_model


def assert_same_weights(loaded: torch.nn.Module, saved: torch.nn.Module) -> None:
    expected = saved.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_a_saved_model_loads_back_as_diffusers_saves_it(tmp_path):
    parts = load_components("tiny", seed=0)
    save_diffusers_model(parts.transformer, tmp_path / "ours")
    parts.transformer.save_pretrained(tmp_path / "theirs")
    names = [sorted(p.name for p in (tmp_path / side).iterdir()) for side in ("ours", "theirs")]
    assert names[0] == names[1]
    assert json.loads((tmp_path / "ours" / "config.json").read_text()) == json.loads(
        (tmp_path / "theirs" / "config.json").read_text())
    assert_same_weights(UVit2DModel.from_pretrained(tmp_path / "ours"), parts.transformer)
    save_diffusers_model(parts.vqvae, tmp_path / "vq")
    assert_same_weights(VQModel.from_pretrained(tmp_path / "vq"), parts.vqvae)


def test_a_model_past_the_shard_size_is_split_with_an_index(tmp_path, monkeypatch):
    monkeypatch.setattr(saving, "SHARD_SIZE", "200KB")
    transformer = load_components("tiny", seed=0).transformer
    save_diffusers_model(transformer, tmp_path)
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    assert_same_weights(UVit2DModel.from_pretrained(tmp_path), transformer)


def test_trained_weights_are_taken_as_they_are_or_cast_into_the_models_own():
    layer = torch.nn.Linear(3, 2)
    layer.bias.requires_grad_(False)
    weight, bias = torch.randn(2, 3), torch.randn(2, dtype=torch.float64)
    given = {"weight": weight.clone(), "bias": bias.clone()}
    load_weights(layer, {"weight": weight, "bias": bias})
    assert layer.weight.data_ptr() == weight.data_ptr(), "the same dtype and device: the tensor itself, no copy"
    assert layer.bias.dtype == torch.float32 and torch.equal(layer.bias, bias.float()), "another dtype: cast in"
    assert isinstance(layer.weight, torch.nn.Parameter) and layer.weight.requires_grad
    assert not layer.bias.requires_grad, "a frozen weight stays frozen"
    assert torch.equal(weight, given["weight"]) and torch.equal(bias, given["bias"]), "the given tensors unchanged"
