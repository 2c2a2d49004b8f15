"""A preview grid of training samples: each image centre-cropped to the shape training crops it to (the square, or its
aspect-ratio bucket), its caption written below."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from amused_lightning.data.captions import Captions
from amused_lightning.data.transforms import covering_size, crop_offsets, to_upright_rgb

Size = tuple[int, int]  # (width, height)

TILE_SIDES = (128, 256)  # tile side: data.resolution, kept within these (legible captions, a small file)
TEXT_LINES = 6  # lines of caption text under each tile
PADDING = 4
COLUMNS = 4


def evenly_spaced(rows: list[int], count: int) -> list[int]:
    """`count` rows spread over `rows` from first to last (all of them when there are fewer)."""
    if count >= len(rows):
        return list(rows)
    return [rows[i * len(rows) // count] for i in range(count)]


def wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """`text` broken into lines no wider than `width` pixels, words kept whole unless one alone is too wide; at
    most `max_lines`, the last ending in "..." when text is left over."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if font.getlength(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
        while font.getlength(line) > width and len(line) > 1:  # a single word wider than the tile
            cut = _longest_fitting_prefix(line, font, width)
            lines.append(line[:cut])
            line = line[cut:]
    lines += [line] if line else []
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [lines[max_lines - 1][:-3].rstrip() + "..."]
    return lines


def _longest_fitting_prefix(text: str, font, width: int) -> int:
    """How many leading characters of `text` fit in `width` pixels (at least one)."""
    return max([1] + [i for i in range(1, len(text)) if font.getlength(text[:i]) <= width])


def caption_text(captions: Captions) -> str:
    """What a tile says: the caption source, the first caption, and how many others a draw may take."""
    more = f" (1 of {len(captions.lines)} captions)" if len(captions.lines) > 1 else ""
    return f"[{captions.origin}] {captions.lines[0]}{more}"


def shown_crop_size(crop: Size, side: int) -> Size:
    """A crop of shape `crop` scaled so that its longer side is `side` pixels."""
    width, height = crop
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def centre_crop(image: Image.Image, crop: Size) -> Image.Image:
    """The image resized to cover `crop` (width, height) and cut to it at its centre."""
    image = to_upright_rgb(image)
    covering = covering_size(*image.size, crop)
    image = image if covering == image.size else image.resize(covering, Image.Resampling.BILINEAR)
    top, left = crop_offsets(image.width, image.height, crop, None)
    return image.crop((left, top, left + crop[0], top + crop[1]))


def tile(image: Image.Image, text: str, size: int, font, crop: Size | None = None) -> Image.Image:
    """The image centre-cropped to the shape of `crop` (default: a square), within a `size` square, with `text`
    wrapped below it."""
    shown = centre_crop(image, shown_crop_size(crop or (size, size), size))
    line_height = font.getbbox("Ag")[3] + 2
    out = Image.new("RGB", (size, size + PADDING + TEXT_LINES * line_height), "white")
    out.paste(shown, ((size - shown.width) // 2, (size - shown.height) // 2))
    draw = ImageDraw.Draw(out)
    for number, line in enumerate(wrap(text, font, size - 2 * PADDING, TEXT_LINES)):
        draw.text((PADDING, size + PADDING + number * line_height), line, fill="black", font=font)
    return out


def grid(tiles: list[Image.Image], columns: int = COLUMNS) -> Image.Image:
    """`tiles` (all of one size) in rows of `columns`, with a gap between them."""
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    width, height = tiles[0].size
    out = Image.new("RGB", (columns * (width + PADDING) + PADDING, rows * (height + PADDING) + PADDING), "black")
    for index, part in enumerate(tiles):
        row, column = divmod(index, columns)
        out.paste(part, (PADDING + column * (width + PADDING), PADDING + row * (height + PADDING)))
    return out


def preview_grid(samples: list[tuple[Image.Image, Captions, Size | None]], resolution: int) -> Image.Image:
    """The grid of `samples` (image, captions, training crop size or None for the square), tiles at the training
    resolution kept within `TILE_SIDES`."""
    font = ImageFont.load_default()
    size = min(max(resolution, TILE_SIDES[0]), TILE_SIDES[1])
    return grid([tile(image, caption_text(captions), size, font, crop) for image, captions, crop in samples])
