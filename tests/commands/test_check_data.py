"""`check-data`: the report of a config's data, and the preview grid."""

import json

import pytest
import yaml
from PIL import Image

from amused_lightning.__main__ import main
from amused_lightning.commands.check_data import main as check_data
from amused_lightning.data.preview import evenly_spaced, wrap


@pytest.fixture
def config(tmp_path):
    """A fit config on a folder: 5 images (one 4:3, one portrait 1:2), one broken, one with an empty caption file;
    captions from a two-line file, metadata (one over 77 tokens), and file names."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (80, 60), "red").save(root / "red.png")
    (root / "red.txt").write_text("a red square\na crimson block\n")
    Image.new("RGB", (64, 64), "blue").save(root / "sub" / "blue.png")
    Image.new("RGB", (40, 80), "green").save(root / "sub" / "green.png")
    Image.new("RGB", (64, 64), "gray").save(root / "gray.png")
    Image.new("RGB", (20, 20), "white").save(root / "small.png")
    (root / "broken.png").write_bytes(b"")
    Image.new("RGB", (64, 64), "black").save(root / "blank.png")
    (root / "blank.txt").write_text("\n")
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "sub/blue.png", "text": "blue " * 40}))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"pretrained": "tiny"}, "trainer": {"default_root_dir": str(tmp_path / "run")},
        "data": {"resolution": 32, "source": {"class_path": "ImageFolder", "init_args": {"path": str(root)}}}}))
    return path


def test_report_numbers_and_preview(config, tmp_path, capsys):
    report = check_data(["--config", str(config), "--samples", "3"])
    out = capsys.readouterr().out
    assert report.total == 7 and len(report.skipped) == 2
    assert "broken.png': empty file (0 bytes)" in out and "blank.png': empty caption file" in out
    assert dict(report.origins) == {"txt": 1, "metadata": 1, "file name": 3} and report.multi_caption_rows == 1
    assert len(report.token_counts) == 6 and sum(count > 77 for count in report.token_counts) == 1
    assert "1 over 77, cut to 77 in training" in out
    assert "under 32 px (upscaled)" in out and "  4:3 " in out and "  1:2 " in out
    preview = tmp_path / "run" / "data-check.png"
    assert f"wrote {preview}: 3 samples with their captions, as the square training crop" in out
    with Image.open(preview) as grid:
        assert grid.width > 3 * 128 and grid.height > 128  # three tiles of 128 px (32 px images, upscaled)
    check_data(["--config", str(config), "--samples", "3"])  # its own preview is no reason to refuse a second run
    assert f"wrote {preview} (replacing the previous one): 3 samples" in capsys.readouterr().out


def test_the_preview_shows_the_bucket_crops(config, tmp_path, capsys):
    check_data(["--config", str(config), "--data.source.init_args.path", str(tmp_path / "images" / "sub"),
                "--data.val_samples", "1", "--data.aspect_buckets", "{}", "--samples", "2"])
    assert "as their aspect-ratio buckets' crops" in capsys.readouterr().out
    with Image.open(tmp_path / "run" / "data-check.png") as grid:
        pixels = grid.convert("RGB")
    blue, green = pixels.getpixel((4 + 64, 4 + 64)), pixels.getpixel((4 + 132 + 64, 4 + 64))
    assert blue == (0, 0, 255) and green == (0, 128, 0)
    # The portrait (1:2) image fills its tile's height but not its width, as its bucket's crop does.
    assert pixels.getpixel((4 + 132 + 2, 4 + 64)) == (255, 255, 255) and pixels.getpixel((4 + 2, 4 + 64)) == blue


def test_overrides_are_fits_and_an_existing_preview_file_is_kept(config, tmp_path, capsys):
    preview = tmp_path / "mine.png"
    preview.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", "--config", str(config), "--preview", str(preview)])
    assert exit_info.value.code == 2 and "already exists: pass --overwrite" in capsys.readouterr().err
    assert preview.read_bytes() == b"keep me"
    report = check_data(["--config", str(config), "--preview", str(preview), "--overwrite",
                         "--data.source.init_args.path", str(tmp_path / "images" / "sub"), "--data.val_samples", "1"])
    assert report.total == 2 and not report.skipped and Image.open(preview).size[0] > 128
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", "--config", str(config), "--data.no_such_setting", "1"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error:")


def test_wrap_keeps_lines_within_the_width_and_the_line_count():
    from PIL import ImageFont

    font = ImageFont.load_default()
    lines = wrap("a " * 200 + "x" * 300, font, 100, 5)
    assert len(lines) == 5 and lines[-1].endswith("...") and all(font.getlength(line) <= 100 for line in lines[:-1])
    assert wrap("y" * 100, font, 100, 9)[0] != "y" * 100  # one word wider than the tile is broken
    assert evenly_spaced([1, 2, 3, 4, 5, 6], 3) == [1, 3, 5] and evenly_spaced([1, 2], 5) == [1, 2]
