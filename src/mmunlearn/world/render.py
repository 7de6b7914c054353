"""Pillow rendering of creatures and of typography, with graded appearance changes.

Drawn at 4x the output size and downsampled, so small images stay anti-aliased. A `View` holds
every appearance knob; proximity tiers are just Views of increasing strength.
"""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from mmunlearn.world.entities import Creature

RGB = {
    "red": (220, 40, 40), "orange": (240, 140, 20), "yellow": (235, 215, 30), "green": (40, 170, 60),
    "teal": (20, 160, 160), "blue": (40, 80, 220), "purple": (140, 50, 190), "pink": (240, 120, 190),
}
BACKGROUND_RGB = {"white": (250, 250, 250), "grey": (120, 120, 120), "sand": (215, 190, 140), "sky": (150, 200, 245)}
SUPERSAMPLE = 4


@dataclass(frozen=True)
class View:
    """Appearance of one rendering. Defaults give the canonical image."""

    angle: float = 0.0  # degrees
    scale: float = 1.0
    dx: float = 0.0  # shift as a fraction of the image side
    dy: float = 0.0
    hue: float = 0.0  # hue rotation in turns
    brightness: float = 1.0
    occlusion: float = 0.0  # side of an occluding square as a fraction of the image side
    outline: bool = False  # alternative rendering style: thick outline, pale fill
    seed: int = 0  # places the occluder


def sample_view(rng: random.Random, strength: float, occlude: bool = False, style: bool = False) -> View:
    """A random view whose changes grow with `strength` in [0, 1]."""
    s = strength
    return View(
        angle=rng.uniform(-50, 50) * s,
        scale=1.0 + rng.uniform(-0.4, 0.2) * s,
        dx=rng.uniform(-0.15, 0.15) * s,
        dy=rng.uniform(-0.15, 0.15) * s,
        hue=rng.uniform(-0.04, 0.04) * s,
        brightness=1.0 + rng.uniform(-0.35, 0.25) * s,
        occlusion=rng.uniform(0.25, 0.35) if occlude else 0.0,
        outline=style,
        seed=rng.randrange(1 << 30),
    )


def _shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def poly(n: int, radii: tuple[float, ...] = (1.0,), offset: float = -90.0):
        pts = []
        for i in range(n * len(radii)):
            a = math.radians(offset + angle + 360.0 * i / (n * len(radii)))
            rr = r * radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if shape == "circle":
        return poly(48)
    if shape == "square":
        return poly(4, offset=-45.0)
    if shape == "triangle":
        return poly(3)
    if shape == "diamond":
        return poly(4, radii=(1.0, 0.62))
    if shape == "star":
        return poly(5, radii=(1.0, 0.45))
    if shape == "hexagon":
        return poly(6)
    if shape == "spark":  # a four-pointed star
        return poly(4, radii=(1.0, 0.42, 0.42))
    if shape == "arch":  # a half-disc
        return [p for p in poly(48)[:25]] + [(cx, cy)]
    raise ValueError(f"unknown shape {shape!r}")


def _pattern_layer(pattern: str, side: int, fg: tuple[int, int, int], angle: float) -> Image.Image:
    layer = Image.new("RGB", (side, side), fg)
    if pattern == "plain":
        return layer
    draw = ImageDraw.Draw(layer)
    dark = tuple(int(c * 0.35) for c in fg)
    step = side // 8
    if pattern == "stripes":
        for x in range(-side, 2 * side, step):
            draw.rectangle([x, -side, x + step // 2, 2 * side], fill=dark)
        return layer.rotate(angle + 30, resample=Image.BILINEAR, fillcolor=fg)
    if pattern == "dots":
        for y in range(step // 2, side, step):
            for x in range(step // 2, side, step):
                draw.ellipse([x - step // 4, y - step // 4, x + step // 4, y + step // 4], fill=dark)
        return layer
    if pattern == "checks":
        for y in range(0, side, step):
            for x in range(0, side, step):
                if (x // step + y // step) % 2:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=dark)
        return layer.rotate(angle, resample=Image.BILINEAR, fillcolor=fg)
    raise ValueError(f"unknown pattern {pattern!r}")


def _jitter(rgb: tuple[int, int, int], hue: float, brightness: float) -> tuple[int, int, int]:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    r, g, b = colorsys.hsv_to_rgb((h + hue) % 1.0, s, min(1.0, v * brightness))
    return (int(r * 255), int(g * 255), int(b * 255))


def render_creature(creature: Creature, size: int = 32, view: View = View()) -> Image.Image:
    side = size * SUPERSAMPLE
    bg = _jitter(BACKGROUND_RGB[creature.background], 0.0, view.brightness)
    fg = _jitter(RGB[creature.color], view.hue, view.brightness)
    img = Image.new("RGB", (side, side), bg)
    cx, cy = side * (0.5 + view.dx), side * (0.5 + view.dy)
    radius = side * 0.40 * view.scale
    points = _shape_points(creature.shape, cx, cy, radius, view.angle)
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    if view.outline:
        fill = Image.new("RGB", (side, side), tuple((c + 2 * b) // 3 for c, b in zip(fg, bg)))
        img.paste(fill, mask=mask)
        pat = _pattern_layer(creature.pattern, side, fg, view.angle)
        inner = Image.new("L", (side, side), 0)
        ImageDraw.Draw(inner).polygon(_shape_points(creature.shape, cx, cy, radius * 0.6, view.angle), fill=255)
        img.paste(pat, mask=inner)
        ImageDraw.Draw(img).line(points + points[:1], fill=fg, width=max(2, side // 20))
    else:
        img.paste(_pattern_layer(creature.pattern, side, fg, view.angle), mask=mask)
    # two eyes make every creature look like a creature and show its orientation
    draw = ImageDraw.Draw(img)
    for sign in (-1, 1):
        a = math.radians(view.angle - 90 + sign * 25)
        ex, ey = cx + 0.45 * radius * math.cos(a), cy + 0.45 * radius * math.sin(a)
        er = max(2.0, side * 0.035 * view.scale)
        draw.ellipse([ex - er, ey - er, ex + er, ey + er], fill=(255, 255, 255), outline=(0, 0, 0),
                     width=max(1, int(er / 2)))
    if view.occlusion > 0:
        rng = random.Random(view.seed)
        w = side * view.occlusion
        ox, oy = rng.uniform(0.15, 0.85 - view.occlusion) * side, rng.uniform(0.15, 0.85 - view.occlusion) * side
        draw.rectangle([ox, oy, ox + w, oy + w], fill=(60, 60, 60))
    return img.resize((size, size), Image.LANCZOS)


@lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


@lru_cache(maxsize=1024)
def _glyphs(line: str, px: int) -> Image.Image:
    """One line of text drawn at `px` on a mask, cropped to its ink with a margin. Kept per line: a card's words
    recur across cards and variants, and drawing the font at this size is a third of a card's cost. Callers only
    read it (`resize` returns a new image)."""
    font = _font(px)
    left, top, right, bottom = font.getbbox(line)
    glyphs = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(glyphs).text((4 - left, 4 - top), line, fill=255, font=font)
    return glyphs


def render_text(lines: list[str], size: int = 32, rng: random.Random | None = None) -> Image.Image:
    """Typography: dark text on a light card, one word per line, each line stretched to fill its band.

    Stretching keeps letters as tall as the card allows, so small images stay legible. With an `rng`
    the placement, ink and paper vary slightly, so reading is learned, not memorised.
    """
    side = size * SUPERSAMPLE
    shade = 245 if rng is None else rng.randint(215, 255)
    img = Image.new("RGB", (side, side), (shade, shade, shade))
    band = side * 0.92 / len(lines)
    for i, line in enumerate(lines):
        width = side * (0.92 if rng is None else rng.uniform(0.84, 0.96))
        height = band * (0.86 if rng is None else rng.uniform(0.78, 0.92))
        glyphs = _glyphs(line, 4 * SUPERSAMPLE * 8).resize((int(width), int(height)), Image.LANCZOS)
        x = (side - width) / 2 + (0 if rng is None else rng.uniform(-0.02, 0.02) * side)
        y = side * 0.04 + i * band + (band - height) / 2 + (0 if rng is None else rng.uniform(-0.02, 0.02) * side)
        ink = 0 if rng is None else rng.randint(0, 80)
        img.paste(Image.new("RGB", glyphs.size, (ink, ink, ink)), (int(x), int(y)), mask=glyphs)
    return img.resize((size, size), Image.LANCZOS)
