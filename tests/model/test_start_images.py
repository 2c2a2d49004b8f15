"""Image-to-image and inpainting: equal to diffusers' AmusedImg2ImgPipeline / AmusedInpaintPipeline on `tiny`, in
`generate` and in validation."""

import numpy as np
import pytest
import torch
from diffusers import AmusedImg2ImgPipeline, AmusedInpaintPipeline, AmusedScheduler
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from amused_lightning.callbacks.validation_images import validation_pixels
from amused_lightning.commands.generate import main as generate_main
from amused_lightning.model.amused import AmusedModel
from amused_lightning.model.decoding import GenerationSettings, to_pil
from amused_lightning.model.start_images import StartImages, first_step, repaint_mask, start_pixels
from amused_lightning.training.module import AmusedModule
from amused_lightning.training.settings import ValidationSettings

from helpers import fails_with

PROMPTS = ["a pixel art character with square red glasses", "a pixel art character"]
STEPS = 4


@pytest.fixture(scope="module")
def tiny_pipeline():
    return AmusedModel.from_pretrained("tiny")


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def box_mask(width: int, height: int) -> Image.Image:
    """White (repaint) in a box off the centre, black elsewhere, in RGB as diffusers' load_image gives it."""
    array = np.zeros((height, width, 3), np.uint8)
    array[height // 6:height // 2, width // 3:width * 5 // 6] = 255
    return Image.fromarray(array)


def diffusers_images(pipeline_class, parts, **kwargs) -> list[np.ndarray]:
    # A fresh scheduler: the inpainting pipeline switches the one it is given to the linear schedule.
    pipe = pipeline_class(vqvae=parts.vqvae, tokenizer=parts.tokenizer, text_encoder=parts.text_encoder,
                          transformer=parts.transformer, scheduler=AmusedScheduler(mask_token_id=64))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPTS, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(7), **kwargs).images
    return [np.asarray(image) for image in images]


def ours(pipeline: AmusedModel, start: StartImages | None, guidance: float = 10.0) -> list[np.ndarray]:
    settings = GenerationSettings(num_inference_steps=STEPS, guidance_scale=guidance)
    return [np.asarray(image) for image in pipeline.generate(PROMPTS, settings, seed=7, start=start)]


@pytest.mark.parametrize("strength, guidance", [(0.5, 10.0), (0.75, 1.0)])
def test_img2img_matches_amused_img2img_pipeline(tiny_pipeline, strength, guidance):
    images = [noise_image(64, 64, 1), noise_image(64, 64, 2)]
    mine = ours(tiny_pipeline, StartImages(images, strength=strength), guidance)
    theirs = diffusers_images(AmusedImg2ImgPipeline, tiny_pipeline.parts, image=images, strength=strength,
                              guidance_scale=guidance)
    assert all(np.array_equal(a, b) for a, b in zip(mine, theirs))
    plain = ours(tiny_pipeline, None, guidance)
    assert not any(np.array_equal(a, b) for a, b in zip(mine, plain)), "the start image changes the result"


@pytest.mark.parametrize("strength", [None, 0.5])
def test_inpainting_matches_amused_inpaint_pipeline(tiny_pipeline, strength):
    images, masks = [noise_image(64, 64, 3)] * 2, [box_mask(64, 64)] * 2
    mine = ours(tiny_pipeline, StartImages(images, masks, strength))
    theirs = diffusers_images(AmusedInpaintPipeline, tiny_pipeline.parts, image=images, mask_image=masks,
                              strength=1.0 if strength is None else strength)
    assert all(np.array_equal(a, b) for a, b in zip(mine, theirs))
    img2img = ours(tiny_pipeline, StartImages(images, strength=1.0 if strength is None else strength))
    assert not any(np.array_equal(a, b) for a, b in zip(mine, img2img))


def test_strength_one_draws_from_the_prompt_alone(tiny_pipeline):
    # AmusedImg2ImgPipeline keeps the start image at strength 1 (it masks with cos(π/2)); here nothing of it is kept.
    start = ours(tiny_pipeline, StartImages([noise_image(64, 64)] * 2, strength=1.0))
    assert all(np.array_equal(a, b) for a, b in zip(start, ours(tiny_pipeline, None)))


def test_images_and_masks_are_resized_as_diffusers_does():
    image, mask = noise_image(90, 50), box_mask(90, 50)
    expected = VaeImageProcessor(vae_scale_factor=4, do_normalize=False).preprocess(image, 64, 64)
    assert torch.equal(start_pixels([image], (64, 64)), expected)
    mask_processor = VaeImageProcessor(vae_scale_factor=4, do_normalize=False, do_binarize=True,
                                       do_convert_grayscale=True)
    tokens = repaint_mask([mask], (16, 16))
    assert torch.equal(tokens, mask_processor.preprocess(mask, 16, 16)[:, 0].bool())
    assert 0 < tokens.sum() < 16 * 16 and not tokens[0, -1].any() and tokens[0, 4, 10]
    assert [first_step(12, s) for s in (1.0, 0.5, 0.3, 0.1)] == [0, 6, 9, 11]


def test_generate_with_image_and_mask(tmp_path):
    noise_image(80, 48).save(tmp_path / "start.png")
    box_mask(80, 48).save(tmp_path / "mask.png")
    common = ["a cat", "--pretrained", "tiny", "--steps", "4", "--image", str(tmp_path / "start.png")]
    img2img = generate_main([*common, "-o", str(tmp_path / "a"), "--strength", "0.5", "--resolution", "32"])
    inpaint = generate_main([*common, "-o", str(tmp_path / "b"), "--mask", str(tmp_path / "mask.png")])
    assert Image.open(img2img[0]).size == (32, 32) and Image.open(inpaint[0]).size == (64, 64)


def test_generate_refuses_bad_start_options(tmp_path, capsys):
    noise_image(64, 64).save(tmp_path / "start.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (64, 64)).save(tmp_path / "black.png")
    common = ["generate", "a cat", "-o", str(tmp_path / "out"), "--pretrained", "tiny"]
    start = ["--image", str(tmp_path / "start.png")]
    for option, value in (("--mask", str(tmp_path / "start.png")), ("--strength", "0.5")):
        assert fails_with(capsys, *common, option, value).startswith(f"error: {option} goes with --image")
    line = fails_with(capsys, *common, "--image", "nope.png")
    assert line.startswith("error: --image='nope.png': no such image file")
    assert "--image=" in (line := fails_with(capsys, *common, "--image", str(tmp_path / "broken.png")))
    assert "is not a readable image" in line
    assert "--mask=" in (line := fails_with(capsys, *common, *start, "--mask", str(tmp_path / "black.png")))
    assert "has no white pixel" in line
    for strength in ("0", "1.5", "-0.2"):
        line = fails_with(capsys, *common, *start, "--strength", strength)
        assert f"--strength={float(strength)} must lie in (0, 1]" in line
    assert "runs none of them" in fails_with(capsys, *common, *start, "--strength", "0.2", "--steps", "4")
    assert not (tmp_path / "out").exists()


def test_validation_draws_from_start_images(tmp_path, toy_dataset, capsys):
    noise_image(64, 64, 4).save(tmp_path / "start.png")
    box_mask(64, 64).save(tmp_path / "mask.png")
    files = [str(tmp_path / "start.png")] * 2
    validation = ValidationSettings(PROMPTS, GenerationSettings(num_inference_steps=4), images=files,
                                masks=[str(tmp_path / "mask.png")] * 2)
    module = AmusedModule("tiny", validation=validation).eval()
    start = StartImages([noise_image(64, 64, 4)] * 2, [box_mask(64, 64)] * 2)
    expected = module.model.generate(PROMPTS, validation.generation, 0, start=start, decode_chunk_size=1)
    drawn = to_pil(validation_pixels(module))
    assert [np.asarray(a).tolist() for a in drawn] == [np.asarray(b).tolist() for b in expected]
    with pytest.raises(FileNotFoundError, match=r"model.validation.images\[1\]='nope.png': no such image file"):
        ValidationSettings(PROMPTS, images=[files[0], "nope.png"])
    with pytest.raises(ValueError, match="model.validation.images has 1 files for 2"):
        ValidationSettings(PROMPTS, images=files[:1])
    with pytest.raises(ValueError, match="need model.validation.images"):
        ValidationSettings(PROMPTS, masks=files)
    line = fails_with(capsys, "fit", "--trainer.default_root_dir", str(tmp_path / "run"), "--model.pretrained",
                      "tiny", "--data.source", "HFDataset", "--data.source.path", str(toy_dataset),
                      "--model.validation.prompts", '["a cat"]', "--model.validation.images", '["nope.png"]')
    assert "model.validation.images[0]='nope.png': no such image file" in line
