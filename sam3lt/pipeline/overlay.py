"""The overlay PNG of one image: translucent coloured masks, boxes and "prompt score" labels under a title bar."""
from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct colours for instances (Sasha Trubetskoy's list), cycled.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]
MASK_ALPHA = 110  # of 255: masks stay translucent
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS (no --checkpoint): masks and scores are meaningless"


def render_overlay(image: Image.Image, instances, title: str, warning: str | None = None) -> Image.Image:
    """The image with translucent coloured masks, boxes and "prompt score" labels, under a title bar (and a
    red warning line, e.g. for random weights)."""
    base = image.convert("RGBA")
    for k, inst in enumerate(instances):
        colour = PALETTE[k % len(PALETTE)]
        fill = Image.new("RGBA", base.size, colour + (0,))
        fill.putalpha(Image.fromarray(inst["mask"].astype(np.uint8) * MASK_ALPHA))
        base = Image.alpha_composite(base, fill)
    draw = ImageDraw.Draw(base)
    font = _font(max(11, min(16, base.width // 40)))
    for k, inst in enumerate(instances):
        colour = PALETTE[k % len(PALETTE)] + (255,)
        x0, y0, x1, y1 = inst["box"]
        draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=colour, width=2)
        label = f"{inst['prompt']} {inst['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x0 + 2, y0 + 1), label, font=font)
        draw.rectangle([left - 2, top - 1, right + 2, bottom + 1], fill=(0, 0, 0, 160))
        draw.text((x0 + 2, y0 + 1), label, fill=colour, font=font)

    width = base.width
    lines = [(line, (255, 255, 255)) for line in _wrap(title, font, width - 12)]
    if warning:
        lines += [(line, (255, 80, 80)) for line in _wrap(warning, font, width - 12)]
    line_height = int(font.getbbox("Ag")[3]) + 4
    bar = 8 + line_height * len(lines)
    canvas = Image.new("RGB", (width, base.height + bar), (30, 30, 30))
    canvas.paste(base.convert("RGB"), (0, bar))
    draw = ImageDraw.Draw(canvas)
    for i, (line, colour) in enumerate(lines):
        draw.text((6, 4 + i * line_height), line, fill=colour, font=font)
    return canvas


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow ≥ 10.1 with FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    """Wrap ``text`` to lines that fit ``width`` pixels in ``font``."""
    per_char = max(1.0, font.getlength("n"))
    return textwrap.wrap(text, max(8, int(width / per_char))) or [""]
