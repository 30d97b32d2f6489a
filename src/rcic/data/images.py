"""Reading a site's per-channel PNGs and making RGB composites for people to look at."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rcic import layout
from rcic.errors import ImageReadError
from rcic.fileio import atomic_path

log = logging.getLogger(__name__)

# Colours of the six stains in composites, as in the RxRx1 authors' viewer (rxrx1-utils):
# nuclei blue, ER green, actin red, nucleoli cyan, mitochondria magenta, Golgi yellow.
CHANNEL_RGB = (
    np.array(
        [[19, 0, 249], [42, 255, 31], [255, 0, 25], [45, 255, 252], [250, 0, 253], [254, 255, 40]],
        dtype=np.float32,
    )
    / 255.0
)

_warned_16bit = False


def site_path(
    root: str | Path, split: str, experiment: str, plate: int, well: str, site: int, channel: int
) -> Path:
    return (
        Path(root)
        / split
        / experiment
        / f"Plate{int(plate)}"
        / layout.png_name(well, site, channel)
    )


def read_png(path: str | Path) -> np.ndarray:
    """One channel as a 2-D uint8 array.

    8-bit PNGs are returned as they are. 16-bit PNGs are scaled linearly to 0..255 (divided by 257,
    so 65535 -> 255): rcic's store and models work in 8 bits, as RxRx1 itself does.
    """
    global _warned_16bit
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot be decoded as PNG ({e})") from None
    if arr.ndim == 3 or mode in ("P", "PA"):
        kind = (
            "a palette image"
            if mode.startswith("P")
            else f"a colour image ({arr.shape[-1]} planes)"
        )
        raise ImageReadError(
            f"{path}: {kind}, mode {mode}; each channel of a site must be one grey plane (8 or 16 bit)"
        )
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype in (np.uint16, np.int32, np.uint32) and arr.max(initial=0) <= 65535:
        if not _warned_16bit:
            log.info("%s is 16-bit: scaling to 8 bits (value / 257)", path)
            _warned_16bit = True
        return (arr.astype(np.uint32) // 257).astype(np.uint8)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}")


def load_site(
    root: str | Path,
    split: str,
    experiment: str,
    plate: int,
    well: str,
    site: int,
    channels: Sequence[int] = layout.CHANNELS,
) -> np.ndarray:
    """Load one site as a uint8 array of shape (len(channels), H, W)."""
    paths = [site_path(root, split, experiment, plate, well, site, c) for c in channels]
    planes = [read_png(p) for p in paths]
    if len({p.shape for p in planes}) != 1:
        raise ImageReadError(_size_mismatch(paths, [p.shape for p in planes]))
    return np.stack(planes)


def _size_mismatch(paths: Sequence[Path], shapes: Sequence[tuple[int, int]]) -> str:
    """The message for a site whose channel PNGs differ in size, naming each file's height x width."""
    first = Path(paths[0])
    site = first.name.rsplit("_", 1)[0]
    sizes = ", ".join(f"{Path(p).name} {h}x{w}" for p, (h, w) in zip(paths, shapes, strict=True))
    return f"{first.parent}/{site}: channels differ in size (height x width): {sizes}"


def write_png(path: str | Path, plane: np.ndarray) -> None:
    """Write one uint8 channel, via a temporary name so no half-written PNG is left behind."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(plane, dtype=np.uint8)).save(
            tmp, format="PNG", compress_level=1
        )


def intensity_range(site: np.ndarray, low: float = 0.5, high: float = 99.7) -> np.ndarray:
    """Per-channel (lo, hi) display range from percentiles; shape (C, 2)."""
    flat = site.reshape(site.shape[0], -1).astype(np.float32)
    lo, hi = np.percentile(flat, [low, high], axis=1)
    return np.stack([lo, np.maximum(hi, lo + 1)], axis=1)


def composite(
    site: np.ndarray, ranges: np.ndarray | None = None, channels: Sequence[int] = layout.CHANNELS
) -> np.ndarray:
    """Blend channels into one RGB uint8 image (H, W, 3), each stain in its own colour.

    Args:
        site: (C, H, W) array of the listed `channels`.
        ranges: per-channel (lo, hi) intensities mapped to 0..1; default from percentiles.
        channels: which channels `site` holds (1-based), choosing their colours.
    """
    ranges = intensity_range(site) if ranges is None else np.asarray(ranges, dtype=np.float32)
    scaled = (site.astype(np.float32) - ranges[:, :1, None]) / (
        ranges[:, 1:, None] - ranges[:, :1, None]
    )
    scaled = np.clip(scaled, 0.0, 1.0)  # (C, H, W)
    colours = CHANNEL_RGB[[c - 1 for c in channels]]  # (C, 3)
    rgb = np.einsum("chw,ck->hwk", scaled, colours) / max(1.0, len(channels) / 3)
    return (np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def scan_sites(
    root: str | Path, sites: Sequence[tuple], workers: int = 1, progress: bool = True
) -> list[str]:
    """Open every PNG of the given sites; return one message per missing or unreadable file.

    Args:
        root: dataset folder.
        sites: (split, experiment, plate, well, site) tuples.
        workers: decoding processes.
    """
    from tqdm import tqdm

    from rcic.parallel import ordered_map

    chunks = [(str(root), list(sites[i : i + 256])) for i in range(0, len(sites), 256)]
    problems: list[str] = []
    shapes: dict[str, tuple[int, int]] = {}
    with (
        ordered_map(_scan_chunk, chunks, workers) as results,
        tqdm(total=len(sites), desc="opening PNGs", unit="site", disable=not progress) as bar,
    ):
        for found, n, sizes in results:
            problems += found
            shapes.update(sizes)
            bar.update(n)
    return problems + _odd_sizes(shapes)


def _odd_sizes(shapes: dict[str, tuple[int, int]]) -> list[str]:
    """Sites whose size differs from the most common one, named by their first PNG."""
    if not shapes:
        return []
    sizes = list(shapes.values())
    common = max(set(sizes), key=sizes.count)
    return [
        f"{p}: {h}x{w} pixels, while most sites are {common[0]}x{common[1]}"
        for p, (h, w) in shapes.items()
        if (h, w) != common
    ]


def _scan_chunk(job) -> tuple[list[str], int, dict]:
    root, sites = job
    found, shapes = [], {}
    for split, exp, plate, well, site in sites:
        seen = {}
        for c in layout.CHANNELS:
            path = site_path(root, split, exp, plate, well, site, c)
            try:
                seen[str(path)] = read_png(path).shape
            except ImageReadError as e:
                found.append(str(e))
        if len(set(seen.values())) > 1:
            found.append(_size_mismatch(list(seen), list(seen.values())))
        elif seen:
            shapes[str(next(iter(seen)))] = next(iter(seen.values()))
    return found, len(sites), shapes
