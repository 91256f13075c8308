"""A recording's P(LEAK) over time, one bar per long segment (red over the threshold, blue under it), with the
dashed threshold line (`--timeline`).

Drawn straight into pixels with numpy and Pillow rather than through matplotlib: about 20 ms a file instead
of about 200 (benchmarks/test_engine_bench.py), so `--timeline` does not dominate a night's scoring. Where a pixel column
covers several long segments (an hour-long file), it shows their maximum: a leak never disappears.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from leakhunter.files import atomic_path

SIZE = (900, 270)
LEFT, RIGHT, TOP, BOTTOM = 58, 16, 34, 38  # margins around the plot area, in pixels
OVER, UNDER, INK, GRID = (214, 39, 40), (31, 119, 180), (0, 0, 0), (225, 225, 225)


class TimelinePlotter:
    """Draws timelines to PNG files (one per process keeps its fonts)."""

    def __init__(self):
        self.font = ImageFont.load_default(size=13)
        self.title_font = ImageFont.load_default(size=15)

    def draw(self, timeline: dict, path: str | Path) -> None:
        starts = np.asarray(timeline["long_start_s"], dtype=float)
        probs = np.clip(np.asarray(timeline["leak_prob"], dtype=float), 0.0, 1.0)
        threshold = float(timeline["threshold"])
        step = starts[1] - starts[0] if len(starts) > 1 else float(timeline["long_seconds"])
        begin, end = (starts[0], starts[-1] + step) if len(starts) else (0.0, 1.0)
        width, height = SIZE[0] - LEFT - RIGHT, SIZE[1] - TOP - BOTTOM
        pixels = np.full((SIZE[1], SIZE[0], 3), 255, np.uint8)

        # Each long segment covers columns [first, last) (at least one); a column shows the highest P(LEAK) in it.
        scale = width / max(end - begin, 1e-12)
        first = np.minimum(((starts - begin) * scale).astype(int), width - 1)
        count = np.maximum(1, ((starts + step - begin) * scale).astype(int) - first)
        columns = np.full(width, -1.0)
        owner = np.repeat(np.arange(len(first)), count)
        np.maximum.at(columns, np.minimum(np.repeat(first, count) + np.arange(len(owner)) -
                                          np.repeat(np.cumsum(count) - count, count), width - 1), probs[owner])
        for fraction in (0.2, 0.4, 0.6, 0.8):  # horizontal grid lines under the bars
            pixels[TOP + round((1 - fraction) * height), LEFT:LEFT + width] = GRID
        bar_tops = TOP + np.round((1 - np.maximum(columns, 0)) * height).astype(int)
        rows = np.arange(SIZE[1])[:, None]
        inside = (rows >= bar_tops[None, :]) & (rows < TOP + height) & (columns[None, :] >= 0)
        colour = np.where((columns >= threshold)[:, None], OVER, UNDER).astype(np.uint8)  # [width, 3]
        area = pixels[:, LEFT:LEFT + width]
        area[inside] = np.broadcast_to(colour[None, :, :], area.shape)[inside]

        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        draw.rectangle([LEFT - 1, TOP - 1, LEFT + width, TOP + height], outline=INK)
        line_y = TOP + round((1 - threshold) * height)
        for x in range(LEFT, LEFT + width, 10):  # the dashed threshold line
            draw.line([x, line_y, min(x + 5, LEFT + width), line_y], fill=INK, width=1)
        for fraction in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
            y = TOP + round((1 - fraction) * height)
            draw.line([LEFT - 5, y, LEFT - 1, y], fill=INK)
            draw.text((LEFT - 8, y), f"{fraction:.1f}", fill=INK, font=self.font, anchor="rm")
        tick = _nice_step((end - begin) / 8)
        for value in np.arange(math.ceil(begin / tick) * tick, end + tick / 2, tick):
            x = LEFT + round((value - begin) * scale)
            if LEFT <= x <= LEFT + width:
                draw.line([x, TOP + height, x, TOP + height + 4], fill=INK)
                draw.text((x, TOP + height + 6), f"{value:g}", fill=INK, font=self.font, anchor="mt")
        draw.text((LEFT + width // 2, SIZE[1] - 4), "time (s)", fill=INK, font=self.font, anchor="mb")
        draw.text((4, TOP - 6), "P(LEAK)", fill=INK, font=self.font, anchor="lb")
        share = float((probs >= threshold).mean()) if len(probs) else 0.0
        draw.text((LEFT + width // 2, 4), f"{Path(timeline['file']).name}: {share:.0%} of long segments over the "
                  f"threshold", fill=INK, font=self.title_font, anchor="mt")
        draw.text((LEFT + width, TOP - 6), f"red: over, blue: under the threshold {threshold:.2f} (dashed)",
                  fill=INK, font=self.font, anchor="rb")
        with atomic_path(path) as temporary:  # a PNG is whole or absent, never half-written
            image.save(temporary, format="PNG", compress_level=1)


def _nice_step(rough: float) -> float:
    """1, 2 or 5 times a power of ten, at least `rough`."""
    power = 10.0 ** math.floor(math.log10(max(rough, 1e-9)))
    return next(power * factor for factor in (1, 2, 5, 10) if power * factor >= rough)
