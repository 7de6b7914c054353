"""Image keys to pixel values, in worker processes when there are many.

Rendering is Pillow drawing plus the image processor, pure Python under the GIL: the vision warm-up's
101,000 renderings take about a minute in one process, while the cores it could share sit idle. Each key's
pixels depend only on the key (renderings are seeded by it), so chunks rendered in other processes and put
back in order give the same tensor, value for value, as one process (a test compares them).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mmunlearn.world.corpus import ImageKey
from mmunlearn.world.entities import World
from mmunlearn.world.images import render_key

CHUNK = 512  # keys per task: big enough that a task's pickling is small beside its rendering
PARALLEL_MIN = 4 * CHUNK  # fewer keys render in this process: a spawned worker costs ~2 s to start

_state: dict[str, Any] = {}


def _init(world: World, image_processor: Any, size: int) -> None:
    _state.update(world=world, processor=image_processor, size=size)


def same_size_kwargs(image_processor: Any, size: int) -> dict[str, bool]:
    """Processor flags that skip a resize and a crop that would leave a `size` x `size` rendering as it is.

    A CLIP-style processor that resizes the shortest edge to `size` and crops `size` x `size` changes nothing in
    such an image (Pillow's same-size resize returns a copy), yet those two steps cost more than the rest of
    the processor: about a tenth of rendering the vision warm-up's identity set. Any other processor (smol's
    resizes to its own size) gets no flags.
    """
    resize, crop = getattr(image_processor, "size", None), getattr(image_processor, "crop_size", None)
    if (getattr(resize, "shortest_edge", None) == size and getattr(crop, "height", None) == size
            and getattr(crop, "width", None) == size
            and not any(getattr(resize, k, None) for k in ("height", "width", "longest_edge"))):
        return {"do_resize": False, "do_center_crop": False}
    return {}


def pixel_values(image_processor: Any, images: list, size: int, return_tensors: str = "np") -> Any:
    """The processor's pixel values of renderings drawn at `size`, without its steps that change nothing there."""
    return image_processor(images=images, return_tensors=return_tensors,
                           **same_size_kwargs(image_processor, size))["pixel_values"]


def _render(world: World, image_processor: Any, size: int, keys: Sequence[ImageKey]) -> np.ndarray:
    return pixel_values(image_processor, [render_key(world, key, size) for key in keys], size)


def _render_chunk(keys: Sequence[ImageKey]) -> np.ndarray:
    return _render(_state["world"], _state["processor"], _state["size"], keys)


def render_keys(world: World, image_processor: Any, size: int, keys: Sequence[ImageKey], workers: int = 1,
                desc: str | None = None) -> torch.Tensor:
    """Pixel values of `keys`, in order; with `workers` > 1 and many keys, chunks render in that many spawned
    processes (fresh interpreters: no forked torch thread pools)."""
    chunks = [keys[i:i + CHUNK] for i in range(0, len(keys), CHUNK)]
    bar = tqdm(total=len(chunks), desc=desc, unit="chunk", disable=None if desc else True)
    with bar:
        if workers <= 1 or len(keys) < PARALLEL_MIN:
            out = []
            for chunk in chunks:
                out.append(_render(world, image_processor, size, chunk))
                bar.update(1)
        else:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init,
                                     initargs=(world, image_processor, size)) as pool:
                out = []
                for values in pool.map(_render_chunk, chunks):
                    out.append(values)
                    bar.update(1)
    if not out:
        return torch.empty(0, 3, size, size)
    return torch.from_numpy(np.concatenate(out))
