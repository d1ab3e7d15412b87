"""Test utilities for anything that needs a vision student (optimizers, evaluation)::

    from mint_llama_vision.testing import tiny_mllama_dir, write_tiny_pngs
    model_dir = tiny_mllama_dir(tmp_path)                  # then student.model=str(model_dir)
    images = write_tiny_pngs(tmp_path / "run", n=4)         # ["images/tile_0.png", ...] relative to run

The model is the same tiny random Mllama the student builds as its offline default
(:mod:`mint_llama_vision.tiny`), so tests exercise the real loading path.
"""

from __future__ import annotations

from pathlib import Path

from mint_llama_vision.tiny import TILE_SIZE, ensure_tiny_mllama


def tiny_mllama_dir(root: str | Path | None = None) -> Path:
    """The tiny Mllama folder, built on first use under ``root`` (e.g. a pytest ``tmp_path`` or
    ``tmp_path_factory.mktemp(...)``), or under the shared MINT cache (``$MINT_CACHE``, default
    ``~/.cache/mint``) when ``root`` is None. Building takes a few seconds; the folder is named
    by the recipe hash (``<root>/models/tiny-mllama-<hash>``), so a changed recipe never reuses a stale build.
    """
    return ensure_tiny_mllama(root)


def write_tiny_pngs(run_dir: str | Path, n: int = 4, *, size: int = TILE_SIZE, subdir: str = "images") -> list[str]:
    """Write ``n`` distinct RGB PNG tiles under ``run_dir/subdir``; return their paths relative to ``run_dir``.

    Tile ``i`` is a flat colour plus a stripe pattern whose orientation and colour depend on ``i``,
    so different tiles give the vision tower clearly different inputs.
    """
    import numpy as np
    from PIL import Image

    run_dir = Path(run_dir)
    (run_dir / subdir).mkdir(parents=True, exist_ok=True)
    palette = [(220, 60, 90), (90, 200, 120), (70, 90, 220), (230, 200, 70), (160, 70, 200), (70, 200, 210)]
    paths = []
    for i in range(n):
        base = np.array(palette[i % len(palette)], dtype=np.uint8)
        pixels = np.tile(base, (size, size, 1))
        stripe = np.arange(size) // max(2, 2 + i) % 2 == 0
        if i % 2:
            pixels[:, stripe] = 255 - base
        else:
            pixels[stripe, :] = 255 - base
        rel = f"{subdir}/tile_{i}.png"
        Image.fromarray(pixels, "RGB").save(run_dir / rel)
        paths.append(rel)
    return paths
