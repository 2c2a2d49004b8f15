import random

import numpy as np
import pytest
import torch
from PIL import Image

from amused_lightning.data.transforms import preprocess_image, resize_shorter_side, to_upright_rgb


def striped(width, height):
    """An RGB image whose red channel encodes the column and green the row."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    array = np.stack([xs % 256, ys % 256, np.full_like(xs, 7)], axis=-1).astype(np.uint8)
    return Image.fromarray(array)


def exif_rotated(tmp_path):
    """A 40x20 image stored with EXIF orientation 6 (display rotated 90° clockwise: 20x40)."""
    image = striped(40, 20)
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    return Image.open(path)


ODD_IMAGES = {
    "rgba": lambda tmp: Image.new("RGBA", (30, 50), (10, 20, 30, 0)),
    "grayscale": lambda tmp: Image.new("L", (50, 30), 128),
    "palette": lambda tmp: Image.new("RGB", (33, 47), (200, 10, 10)).convert("P"),
    "palette_transparent": lambda tmp: _transparent_palette(),
    "sixteen_bit": lambda tmp: Image.fromarray(np.full((20, 25), 40000, dtype=np.uint16)),
    "cmyk": lambda tmp: Image.new("CMYK", (26, 26), (0, 255, 255, 0)),
    "tiny": lambda tmp: Image.new("RGB", (5, 3), (1, 2, 3)),
    "exif": exif_rotated,
}


def _transparent_palette():
    image = Image.new("P", (20, 30), 0)
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize("kind", sorted(ODD_IMAGES))
def test_odd_images_become_square_rgb_in_unit_range(kind, tmp_path):
    image = ODD_IMAGES[kind](tmp_path)
    sample = preprocess_image(image, 16, random.Random(0))
    pixels = sample["pixel_values"]
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    upright = to_upright_rgb(image)
    width, height = upright.size
    top, left = sample["micro_conds"][2:4].tolist()
    assert sample["micro_conds"][:2].tolist() == [width, height]
    resized = resize_shorter_side(upright, 16)
    assert 0 <= top <= resized.height - 16 and 0 <= left <= resized.width - 16


def test_exif_orientation_is_applied(tmp_path):
    sample = preprocess_image(exif_rotated(tmp_path), 8, random.Random(0))
    assert sample["micro_conds"][:2].tolist() == [20, 40]


def test_sixteen_bit_keeps_its_brightness():
    image = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert preprocess_image(image, 4, random.Random(0))["pixel_values"].min() == 1.0


def test_random_crop_is_exact_pixels_of_resized_image():
    image = striped(64, 32)  # already short side 32: no resize at resolution 32
    sample = preprocess_image(image, 32, random.Random(3), aesthetic_score=5.5)
    top, left = (int(v) for v in sample["micro_conds"][2:4])
    assert top == 0 and sample["micro_conds"][4] == 5.5
    expected = torch.from_numpy(np.array(image)[:, left:left + 32]).permute(2, 0, 1).float() / 255
    assert torch.equal(sample["pixel_values"], expected)


def test_crops_vary_with_seed_and_repeat_with_same_seed():
    image = striped(200, 50)
    lefts = {preprocess_image(image, 50, random.Random(seed))["micro_conds"][3].item() for seed in range(20)}
    assert len(lefts) > 10
    first = preprocess_image(image, 50, random.Random(5))
    again = preprocess_image(image, 50, random.Random(5))
    assert torch.equal(first["pixel_values"], again["pixel_values"])


def test_center_crop_and_flip():
    image = striped(100, 50)
    centred = preprocess_image(image, 50, random.Random(0), center_crop=True)
    assert centred["micro_conds"][2:4].tolist() == [0, 25]
    flips = [preprocess_image(image, 50, random.Random(s), center_crop=True, random_flip=True) for s in range(12)]
    flipped = [s for s in flips if not torch.equal(s["pixel_values"], centred["pixel_values"])]
    assert 0 < len(flipped) < 12
    assert torch.equal(flipped[0]["pixel_values"], centred["pixel_values"].flip(-1))


def test_shorter_side_resize_keeps_aspect():
    assert resize_shorter_side(Image.new("RGB", (300, 150)), 64).size == (128, 64)
    assert resize_shorter_side(Image.new("RGB", (10, 25)), 64).size == (64, 160)
