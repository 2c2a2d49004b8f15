"""Captions of image folders: caption files, metadata, file names; reproducible line choice; the cache."""

import json

import pytest
import torch
from PIL import Image

from amused_lightning.data import ImageFolder, SingleImage
from amused_lightning.data.bad_data import BadImageError
from amused_lightning.data.batch import INPUT_IDS, PROMPT_HIDDEN
from amused_lightning.data.captions import FILE_NAME, METADATA, TXT, MetadataError, caption_index
from amused_lightning.model.encoding import encode_prompts, tokenize_prompts

from helpers import connected, tiny_encoders


def image(path, colour=(200, 0, 0), size=(40, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    """a.png: caption file (and a metadata entry it wins over); b.png: metadata; sub/c.png: file name;
    sub/deeper/d.png: a caption file of three lines, blank ones around them; .hidden/e.png: ignored."""
    root = tmp_path / "images"
    image(root / "a.png")
    (root / "a.txt").write_text("a red square\n")
    image(root / "b.png", (0, 0, 200))
    image(root / "sub" / "c.png", (0, 200, 0))
    image(root / "sub" / "deeper" / "d.png", (9, 9, 9))
    (root / "sub" / "deeper" / "d.txt").write_text("\nfirst line\n  second line  \n\nthird line\n")
    image(root / ".hidden" / "e.png")
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(row) for row in [
        {"file_name": "a.png", "text": "loses to a.txt"}, {"file_name": "b.png", "text": "a blue square"}]))
    return root


def by_name(source):
    return {path.name: source.captions(row) for row, path in enumerate(source.paths)}


def test_caption_file_then_metadata_then_file_name_in_subfolders(folder):
    captions = by_name(ImageFolder(str(folder)))
    assert set(captions) == {"a.png", "b.png", "c.png", "d.png"}  # subfolders searched, hidden ones not
    assert captions["a.png"].lines == ("a red square",) and captions["a.png"].origin == TXT
    assert captions["b.png"].lines == ("a blue square",) and captions["b.png"].origin == METADATA
    assert captions["c.png"].lines == ("c",) and captions["c.png"].origin == FILE_NAME
    assert captions["d.png"].lines == ("first line", "second line", "third line")


def test_a_caption_extension_without_its_dot_is_read_with_it(folder, caplog):
    (folder / "b.caption").write_text("a blue caption\n")
    caplog.set_level("INFO", "amused_lightning")
    source = ImageFolder(str(folder), caption_extension="caption")
    assert source.caption_extension == ".caption"
    assert by_name(source)["b.png"].lines == ("a blue caption",)
    assert "data.source.caption_extension='caption' read as '.caption'" in caplog.text


def test_metadata_csv_of_a_subfolder_with_a_chosen_column_and_list_captions(tmp_path):
    image(tmp_path / "sub" / "x.png")
    image(tmp_path / "y.png")
    (tmp_path / "sub" / "metadata.csv").write_text("file_name,caption,label\nx.png,a caption of x,1\n")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "y.png", "label": ["one y", "two y"]}))
    captions = by_name(ImageFolder(str(tmp_path), caption_column="label"))
    assert captions["x.png"].lines == ("1",) and captions["y.png"].lines == ("one y", "two y")
    assert by_name(ImageFolder(str(tmp_path / "sub")))["x.png"].lines == ("a caption of x",)  # caption, by default
    with pytest.raises(MetadataError, match="caption columns"):
        ImageFolder(str(tmp_path)).captions(0)  # the root's metadata has no text/caption/prompt column


def test_metadata_mistakes_are_one_line_errors(tmp_path):
    image(tmp_path / "x.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "x.png", "text": "x"}\nnot json\n')
    with pytest.raises(MetadataError, match="line 2 is not JSON"):
        ImageFolder(str(tmp_path)).captions(0)
    (tmp_path / "metadata.csv").write_text("file_name,text\nx.png,x\n")
    with pytest.raises(MetadataError, match="holds both metadata.jsonl and metadata.csv"):
        ImageFolder(str(tmp_path)).captions(0)


def test_empty_or_unreadable_captions_are_bad_rows_not_file_names(tmp_path):
    for name in ("ok", "empty", "latin1", "null"):
        image(tmp_path / f"{name}.png")
    (tmp_path / "empty.txt").write_text(" \n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "null.png", "text": None}))
    source = ImageFolder(str(tmp_path))
    reasons = {source.paths[row].stem: reason for row, reason in source.bad_rows.items()}
    assert set(reasons) == {"empty", "latin1", "null"}
    assert "empty caption file" in reasons["empty"] and "not UTF-8" in reasons["latin1"]
    assert "no caption text (None)" in reasons["null"]
    with pytest.raises(BadImageError, match="3 of 4 rows cannot be used.*empty caption file"):
        connected(source, resolution=32, cache="off", on_bad_image="error").setup("fit")


def test_line_choice_follows_the_draw_seed_and_row_only(folder):
    source = ImageFolder(str(folder))
    row = next(row for row, path in enumerate(source.paths) if path.name == "d.png")
    drawn = [source.prompt(row, seed) for seed in range(60)]
    assert drawn == [ImageFolder(str(folder)).prompt(row, seed) for seed in range(60)]  # a resumed run's source
    assert set(drawn) == {"first line", "second line", "third line"}
    assert [caption_index(3, seed, row) for seed in range(60)] != [caption_index(3, seed, row + 1) for seed in
                                                                   range(60)]
    assert caption_index(1, 123, row) == 0


def test_pixel_samples_train_on_the_drawn_line(folder):
    datamodule = connected(ImageFolder(str(folder)), resolution=32, cache="off", val_samples=1)
    datamodule.setup("fit")
    dataset, tokenizer = datamodule.train_dataset, tiny_encoders().tokenizer
    index = next(i for i, row in enumerate(dataset.rows) if dataset.source.paths[row].name == "d.png")
    for seed in range(8):
        expected = tokenize_prompts(tokenizer, [dataset.source.prompt(dataset.rows[index], seed)])[0]
        assert torch.equal(dataset[(index, seed, 0)][INPUT_IDS], expected)


def test_cache_encodes_every_line_and_draws_as_pixels_do(folder, tmp_path):
    datamodule = connected(ImageFolder(str(folder)), resolution=32, cache="on", cache_crops=1, val_samples=1,
                           cache_dir=str(tmp_path / "cache"))
    datamodule.setup("fit")
    dataset, encoders = datamodule.train_dataset, tiny_encoders()
    index = next(i for i, row in enumerate(dataset.rows) if dataset.source.paths[row].name == "d.png")
    assert len(dataset.cache.hidden) == sum(len(dataset.source.captions(row).lines) for row in dataset.cache_index)
    for seed in range(4):
        prompt = dataset.source.prompt(dataset.rows[index], seed)
        with torch.no_grad():
            hidden, _ = encode_prompts(encoders.text_encoder, tokenize_prompts(encoders.tokenizer, [prompt]))
        torch.testing.assert_close(dataset[(index, seed, 0)][PROMPT_HIDDEN], hidden[0])


def test_identity_changes_with_caption_files_and_metadata(folder):
    before = ImageFolder(str(folder)).identity
    (folder / "b.txt").write_text("a caption file now")
    with_file = ImageFolder(str(folder)).identity
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "c.png", "text": "changed metadata"}))
    assert len({before, with_file, ImageFolder(str(folder)).identity}) == 3


def test_single_image_reads_a_caption_file_beside_it(tmp_path):
    path = image(tmp_path / "style.png")
    assert SingleImage(str(path)).prompt(0) == "style"
    (tmp_path / "style.txt").write_text("a mushroom in [V] style\n")
    assert SingleImage(str(path)).prompt(0) == "a mushroom in [V] style"
