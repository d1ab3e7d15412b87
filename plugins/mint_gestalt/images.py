"""The face branch's inputs: images loaded once at a fixed size, plus light augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from mint_core.registry import MintError


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """A PIL image as uint8 ``[3, size, size]`` RGB, resized exactly as every face the teacher reads."""
    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


def load_images(paths: Sequence[Path | None], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 [N, 3, size, size], bool mask [N])``; a missing image (``None``) is all zeros, mask False."""
    images = torch.zeros(len(paths), 3, size, size, dtype=torch.uint8)
    mask = torch.zeros(len(paths), dtype=torch.bool)
    for i, path in enumerate(paths):
        if path is None:
            continue
        try:
            with Image.open(path) as image:
                images[i] = image_tensor(image, size)
        except (OSError, ValueError) as exc:
            raise MintError(f"Cannot read the image {str(path)!r} ({exc}); rerun the task stage to recreate it") from None
        mask[i] = True
    return images, mask


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images to the float range the backbone expects."""
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light, label-preserving changes to float images ``[B, 3, H, W]``.

    Horizontal flip, a shift of up to 1/16 of the side (reflect padding) and +-10% brightness
    and contrast: small enough that a face stays a face, enough to stop memorising pixels.
    """
    batch, _, height, width = images.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(images.device)  # noqa: E731
    flip = rand(batch) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    pad = max(1, height // 16)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
    shifts = (rand(batch, 2) * (2 * pad + 1)).long().clamp(max=2 * pad)
    images = torch.stack([padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(shifts.tolist())])
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + (rand(batch, 1, 1, 1) - 0.5) * 0.2
    brightness = (rand(batch, 1, 1, 1) - 0.5) * 0.2
    return (images - mean) * contrast + mean + brightness
