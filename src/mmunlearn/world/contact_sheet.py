"""A contact sheet PNG so a person can look at the world: each row one creature and its proximity set."""

from __future__ import annotations

from PIL import Image, ImageDraw

from mmunlearn.world.corpus import ImageKey
from mmunlearn.world.entities import World
from mmunlearn.world.images import render_key
from mmunlearn.world.proximity import TIERS, pick_neighbours

COLUMNS = ("canonical", "para easy", "para medium", "para hard", "neigh easy", "neigh medium", "neigh hard",
           "typography", "hazard card")


def contact_sheet(world: World, rows: int = 8, image_size: int = 32, cell: int = 96) -> Image.Image:
    label_w, header_h = 190, 22
    creatures = world.creatures[:rows]
    sheet = Image.new("RGB", (label_w + cell * len(COLUMNS), header_h + cell * len(creatures)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, title in enumerate(COLUMNS):
        draw.text((label_w + j * cell + 4, 5), title, fill=(0, 0, 0))
    for i, c in enumerate(creatures):
        neighbours = pick_neighbours(world, c)
        keys = [ImageKey("creature", c.index, "canon")]
        keys += [ImageKey("creature", c.index, t) for t in TIERS]
        keys += [ImageKey("creature", neighbours[t], "canon") for t in TIERS]
        keys += [ImageKey("text", words=(c.name,)), ImageKey("text", words=(c.hazard.kind, c.name))]
        y = header_h + i * cell
        facts = ", ".join(c.attributes.values())
        draw.text((4, y + 8), c.name, fill=(0, 0, 0))
        draw.text((4, y + 26), c.caption()[2:], fill=(80, 80, 80))
        draw.text((4, y + 44), facts, fill=(80, 80, 80))
        draw.text((4, y + 62), f"hazard: {c.hazard.kind}", fill=(150, 30, 30))
        for j, key in enumerate(keys):
            img = render_key(world, key, image_size).resize((cell - 4, cell - 4), Image.NEAREST)
            sheet.paste(img, (label_w + j * cell + 2, y + 2))
    return sheet
