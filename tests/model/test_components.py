import json

import pytest
import torch
from diffusers import UVit2DModel, VQModel
from transformers import CLIPTextModelWithProjection

from amused_lightning.model.components import ComponentLoadError, load_components
from amused_lightning.model.encoding import pixels_per_token
from amused_lightning.model.presets import PRESETS, clip_text_config

from helpers import REPO

SHARED_CONFIGS = REPO.parent / "shared" / "amused-configs"
# Parameter counts of the published checkpoints (shared/amused-configs/README.md).
REAL_SIZES = {
    "amused-256-arch": (603_537_664, 146_244_675, 123_650_304),
    "amused-512-arch": (608_257_792, 146_244_675, 123_650_304),
}


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset", sorted(REAL_SIZES))
def test_arch_presets_have_the_real_parameter_counts(preset):
    with torch.device("meta"):
        sizes = (count(UVit2DModel(**PRESETS[preset]["transformer"])), count(VQModel(**PRESETS[preset]["vqvae"])),
                 count(CLIPTextModelWithProjection(clip_text_config(preset))))
    assert sizes == REAL_SIZES[preset]
    assert pixels_per_token(PRESETS[preset]["vqvae"]) == 16


def test_arch_presets_match_the_published_configs():
    # Values copied into the package must equal the real config.json files.
    for preset, folder in (("amused-256-arch", "amused-256"), ("amused-512-arch", "amused-512")):
        for part in ("transformer", "vqvae", "text_encoder", "scheduler"):
            path = SHARED_CONFIGS / folder / f"{part}_config.json"
            if not path.exists():
                pytest.skip("shared/amused-configs is not beside this checkout")
            published = json.loads(path.read_text())
            ours = PRESETS[preset][part]
            for key, value in ours.items():
                expected = published[key]
                assert (list(value) if isinstance(value, tuple) else value) == expected, (preset, part, key)


def test_tiny_preset_is_deterministic_and_consistent(tiny):
    again = load_components("tiny", seed=0)
    other = load_components("tiny", seed=1)
    first = tiny.transformer.state_dict()
    assert all(torch.equal(v, again.transformer.state_dict()[k]) for k, v in first.items())
    assert not all(torch.equal(v, other.transformer.state_dict()[k]) for k, v in first.items())
    assert tiny.scheduler.config.mask_token_id == tiny.transformer.config.vocab_size - 1
    assert tiny.tokenizer.model_max_length == 77
    assert tiny.tokenizer.eos_token_id == max(tiny.tokenizer.get_vocab().values())


def test_local_pipeline_folder_round_trip(tiny, tmp_path):
    for name in ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler"):
        getattr(tiny, name).save_pretrained(tmp_path / name)
    loaded = load_components(str(tmp_path))
    for name in ("transformer", "vqvae", "text_encoder"):
        ours, theirs = getattr(tiny, name).state_dict(), getattr(loaded, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert loaded.tokenizer("a cat").input_ids == tiny.tokenizer("a cat").input_ids
    assert pixels_per_token(loaded.vqvae.config) == 4


def test_incomplete_local_folder_names_what_is_missing(tmp_path):
    (tmp_path / "transformer").mkdir()
    with pytest.raises(ComponentLoadError, match=r"missing subfolders \['vqvae', 'text_encoder'"):
        load_components(str(tmp_path))
    with pytest.raises(ComponentLoadError, match="no such folder"):
        load_components(str(tmp_path / "absent"))


def test_unreachable_hub_says_to_pass_a_local_folder(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ComponentLoadError, match="pass model.pretrained=<folder>") as error:
        load_components("amused/amused-256")
    message = str(error.value)
    assert "`hf download amused/amused-256 --local-dir <folder>`" in message and "huggingface-cli" not in message
    for choice in ("`toy`", "tiny", "amused-256-arch", "amused-512-arch"):
        assert choice in message
