"""Differentiable image preprocessing: image tensors in, the processor's pixel inputs out.

ReFL backpropagates the reward into the generator's pixels, so the reward model's image
preprocessing must be a torch function of the image tensor. The families' processors are PIL/NumPy
code (``Qwen2VLImageProcessorPil``, ``GotOcr2ImageProcessorPil``: the families' "fast" processors
need torchvision, which rewarddance does not depend on); :func:`pixel_inputs_from_tensor`
re-implements them in torch, and :func:`rewarddance.judge.differentiable.differentiable_rewards`
uses it to compute P("yes") with gradients to the images.

What "the same as the processor" means: the processor sees the PIL image of a ``[0, 1]`` tensor
(:func:`to_pil_images`: ``round(255 x)`` as uint8) and

1. resizes it with Pillow (Qwen: ``smart_resize`` to multiples of ``patch_size * merge_size``
   within the pixel budget; InternVL: to ``size``, or to a tile canvas when ``crop_to_patches``),
2. rescales by ``1/255`` and normalises with ``image_mean``/``image_std``,
3. (Qwen) patchifies into ``[grid_t * grid_h * grid_w, C * temporal_patch * patch * patch]`` rows in
   merge-window order, with ``image_grid_thw``; (InternVL) stacks ``[tiles, C, H, W]``.

Pillow resamples uint8 images in two separable passes with 22-bit fixed-point weights and rounds
and clips to uint8 after each pass. ``F.interpolate(..., antialias=True)`` uses the same filters
(bicubic with a = -0.5) but in float and in one go, so it misses those roundings and Pillow's pass
order: measured on shapes renders it is off by up to 1-5 uint8 levels (up to ~0.07 after CLIP
normalisation). This module instead builds Pillow's exact weights (the same filter functions,
support, normalisation and fixed-point rounding: ``precompute_coeffs`` / ``normalize_coeffs_8bpc``
in Pillow's ``Resample.c``) as ``[out, in]`` matrices and applies them as matmuls in Pillow's pass
order, rounding and clipping after each pass in the forward pass only (straight-through).

Measured (tests/models/test_pixels.py, Pillow 13): the pixel inputs are bit-identical to the
processor's (max abs difference 0.0; the tests assert < 1e-5) for every tiny family, with and
without resizing, InternVL's tiling included, and :func:`pil_resize` equals ``Image.resize`` for
every Pillow filter. With ``quantize=False`` the forward pass skips the roundings (a smooth
function) and differs by about one uint8 level (max 0.015 after normalisation; asserted < 0.05).
Pillow before 13 always resamples horizontally first (this module follows the installed version);
on MPS, which has no float64, sums in float32 put ~0.1% of values one level off.

Gradients: the backward pass is that of the resampling filter itself (rounding and clipping are
identities there), so white or saturated pixels still receive gradients. The matmuls run in
float64 so the fixed-point sums are exact: about 4 GFLOP for a 1024 px image resized to 448 px,
trivial on data-centre GPUs, a few milliseconds where float64 is slow.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import PIL
import torch
from PIL import Image
from torch import Tensor
from transformers import ProcessorMixin
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    GotOcr2ImageProcessorPil,
    get_optimal_tiled_canvas,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

__all__ = [
    "join_pixel_inputs",
    "per_image_pixel_inputs",
    "pil_resize",
    "pil_to_tensor",
    "pixel_inputs_from_tensor",
    "to_pil_images",
]

# --------------------------------------------------------------------------------------------
# Pillow's resampling, as matrices
# --------------------------------------------------------------------------------------------

_PRECISION_BITS = 32 - 8 - 2
"""Pillow's fixed-point precision for 8-bit resampling (``Resample.c``)."""

_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


def _bicubic(x: float) -> float:
    a = -0.5  # Pillow's (and torch's antialiased) bicubic; torch's plain bicubic uses -0.75
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _box(x: float) -> float:
    return 1.0 if -0.5 < x <= 0.5 else 0.0


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x *= math.pi
    # Pillow writes these constants as C floats (0.54f), which are not the doubles 0.54 and 0.46.
    return math.sin(x) / x * (float(np.float32(0.54)) + float(np.float32(0.46)) * math.cos(x))


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


def _mks2013(x: float) -> float:
    # Magic Kernel Sharp 2013 (Pillow 13).
    x = abs(x)
    if x < 0.5:
        return 17.0 / 16.0 - 7.0 / 4.0 * x**2
    if x < 1.5:
        return (1.0 - x) * (7.0 / 4.0 - x)
    if x < 2.5:
        return -1.0 / 8.0 * (x - 5.0 / 2.0) ** 2
    return 0.0


def _mks2021(x: float) -> float:
    # Magic Kernel Sharp 2021 (Pillow 13).
    x = abs(x)
    if x < 0.5:
        return 577.0 / 576.0 - 239.0 / 144.0 * x**2
    if x < 1.5:
        return 35.0 / 36.0 * (x - 1.0) * (x - 239.0 / 140.0)
    if x < 2.5:
        return 1.0 / 6.0 * (x - 2.0) * (65.0 / 24.0 - x)
    if x < 3.5:
        return 1.0 / 36.0 * (x - 3.0) * (x - 15.0 / 4.0)
    if x < 4.5:
        return -1.0 / 288.0 * (x - 9.0 / 2.0) ** 2
    return 0.0


# Pillow's filters and their supports (Resample.c); the MKS filters exist from Pillow 13 on.
_FILTERS: dict[int, tuple[Callable[[float], float], float]] = {
    int(Image.Resampling.BOX): (_box, 0.5),
    int(Image.Resampling.BILINEAR): (_bilinear, 1.0),
    int(Image.Resampling.HAMMING): (_hamming, 1.0),
    int(Image.Resampling.BICUBIC): (_bicubic, 2.0),
    int(Image.Resampling.LANCZOS): (_lanczos, 3.0),
    6: (_mks2013, 2.5),
    7: (_mks2021, 4.5),
}


@functools.lru_cache(maxsize=64)
def _resample_matrix(in_size: int, out_size: int, resample: int) -> Tensor:
    """Pillow's weights for resizing one axis from ``in_size`` to ``out_size``, ``[out, in]`` float64.

    A transcription of ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` (Pillow's
    ``Resample.c``): the weights are rounded to Pillow's 22-bit fixed point, so ``matrix @ levels``
    is exactly Pillow's accumulator divided by ``2**22`` (every term and partial sum is exact in
    float64). ``NEAREST`` is a 0/1 selection matrix with Pillow's source positions (its affine
    path accumulates ``x += scale`` in doubles, reproduced as such).
    """
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    scale = in_size / out_size
    if resample == int(Image.Resampling.NEAREST):
        position = scale * 0.5
        for out in range(out_size):
            matrix[out, min(int(position), in_size - 1)] = 1.0
            position += scale
        return torch.from_numpy(matrix)
    if resample not in _FILTERS:
        raise ValueError(
            f"Unsupported PIL resampling filter {resample!r}; supported: {sorted(_FILTERS)} and NEAREST (0)."
        )
    kernel, kernel_support = _FILTERS[resample]
    filter_scale = max(scale, 1.0)  # downscaling widens the filter: Pillow's antialiasing
    support = kernel_support * filter_scale
    one = 1 << _PRECISION_BITS
    for out in range(out_size):
        center = (out + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        weights = [kernel((x - center + 0.5) / filter_scale) for x in range(lo, hi)]
        total = sum(weights)
        if total != 0.0:
            weights = [w / total for w in weights]
        # Pillow rounds each weight half away from zero to fixed point; the rounded weights no
        # longer sum to exactly one, and the result depends on it.
        fixed = [int(w * one + (0.5 if w >= 0 else -0.5)) for w in weights]
        matrix[out, lo:hi] = np.asarray(fixed, dtype=np.float64) / one
    return torch.from_numpy(matrix)


def _straight_through(x: Tensor, value: Tensor) -> Tensor:
    """``value`` in the forward pass (bit-exact), the identity's gradient in the backward pass."""
    return value.detach() + (x - x.detach())


def _to_uint8_levels(x: Tensor, quantize: bool) -> Tensor:
    """Round half up and clip to ``[0, 255]`` as Pillow's ``clip8`` does, straight-through."""
    value = torch.floor(x + 0.5) if quantize else x
    return _straight_through(x, value.clamp(0.0, 255.0))


def _compute_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps Pillow's fixed-point sums exact; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def pil_resize(
    levels: Tensor,
    size: tuple[int, int],
    resample: int | Image.Resampling = Image.Resampling.BICUBIC,
    *,
    quantize: bool = True,
) -> Tensor:
    """Resize ``[..., H, W]`` uint8-level images (values in ``[0, 255]``) exactly as Pillow does, differentiably.

    Args:
        levels: Images as floats on the 0-255 scale (any leading dimensions).
        size: Output ``(height, width)``.
        resample: A ``PIL.Image.Resampling`` filter (all of Pillow's are supported).
        quantize: Round to integer levels after each pass like Pillow's uint8 path (forward only).

    Returns:
        The resized images, ``[..., height, width]``, in ``levels``' dtype (computed in float64).
    """
    in_h, in_w = levels.shape[-2:]
    out_h, out_w = size
    if (in_h, in_w) == (out_h, out_w):
        return levels  # Pillow returns a copy without resampling
    dtype = _compute_dtype(levels.device)
    y = levels.to(dtype)
    resample = int(resample)
    if resample == int(Image.Resampling.NEAREST):
        # Pillow picks source pixels in one affine pass; no arithmetic, so no rounding either.
        rows = _resample_matrix(in_h, out_h, resample).to(y.device, dtype)
        cols = _resample_matrix(in_w, out_w, resample).to(y.device, dtype)
        return (rows @ y @ cols.T).to(levels.dtype)

    def horizontal(t: Tensor) -> Tensor:
        if t.shape[-1] == out_w:
            return t
        return _to_uint8_levels(t @ _resample_matrix(in_w, out_w, resample).to(t.device, dtype).T, quantize)

    def vertical(t: Tensor) -> Tensor:
        if t.shape[-2] == out_h:
            return t
        return _to_uint8_levels(_resample_matrix(in_h, out_h, resample).to(t.device, dtype) @ t, quantize)

    # Pillow 13 runs the vertical pass first when the height shrinks more than twice as much as
    # the width (Pillow PR 9549); earlier versions always go horizontal first. The order matters
    # because each pass rounds to uint8.
    vertical_first = _PILLOW_MAJOR >= 13 and (in_h - out_h) > 0 and (in_h - out_h) > 2 * (in_w - out_w)
    y = horizontal(vertical(y)) if vertical_first else vertical(horizontal(y))
    return y.to(levels.dtype)


# --------------------------------------------------------------------------------------------
# The families' image processors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """The effective preprocessing settings of one processor call (attributes + call defaults)."""

    family: Literal["qwen", "internvl"]
    do_resize: bool
    size: Any  # SizeDict or dict
    resample: int
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    patch_size: int = 0
    merge_size: int = 0
    temporal_patch_size: int = 0
    crop_to_patches: bool = False
    min_patches: int = 1
    max_patches: int = 1


def _size_value(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)
    return int(value) if value is not None else None


def _call_kwargs(processor: ProcessorMixin) -> dict[str, Any]:
    """The image kwargs the processor passes to its image processor on a plain call.

    InternVL's processor forces ``crop_to_patches`` per call (a class-level default, which
    rewarddance's subclass makes a per-instance setting), so the image processor's own attribute
    is not what runs. ``_merge_kwargs`` is how the processor itself computes them.
    """
    try:
        return dict(processor._merge_kwargs()["images_kwargs"])
    except (AttributeError, KeyError, TypeError):  # a processor without the usual kwargs machinery
        return dict(getattr(processor, "images_kwargs", None) or {})


def _settings(processor: Any) -> _Settings:
    if isinstance(processor, ProcessorMixin):
        image_processor = processor.image_processor
        overrides = _call_kwargs(processor)
    else:
        image_processor, overrides = processor, {}

    def get(name: str, default: Any = None) -> Any:
        if overrides.get(name) is not None:
            return overrides[name]
        return getattr(image_processor, name, default)

    if isinstance(image_processor, Qwen2VLImageProcessorPil):
        family: Literal["qwen", "internvl"] = "qwen"
    elif isinstance(image_processor, GotOcr2ImageProcessorPil):
        family = "internvl"
    else:
        raise TypeError(
            f"No differentiable path for {type(image_processor).__name__}; supported: Qwen2VLImageProcessorPil "
            "(Qwen2-VL, Qwen2.5-VL, Qwen3-VL) and GotOcr2ImageProcessorPil (InternVL)."
        )
    resample = get("resample")
    return _Settings(
        family=family,
        do_resize=bool(get("do_resize", True)),
        size=get("size"),
        resample=int(resample) if resample is not None else int(Image.Resampling.BILINEAR),
        do_rescale=bool(get("do_rescale", True)),
        rescale_factor=float(get("rescale_factor", 1 / 255)),
        do_normalize=bool(get("do_normalize", True)),
        image_mean=tuple(float(m) for m in get("image_mean")),
        image_std=tuple(float(s) for s in get("image_std")),
        patch_size=int(get("patch_size", 0) or 0),
        merge_size=int(get("merge_size", 0) or 0),
        temporal_patch_size=int(get("temporal_patch_size", 0) or 0),
        crop_to_patches=bool(get("crop_to_patches", False)),
        min_patches=int(get("min_patches", 1)),
        max_patches=int(get("max_patches", 1)),
    )


def _normalize(levels: Tensor, settings: _Settings) -> Tensor:
    """Uint8 levels ``[N, 3, H, W]`` -> the processor's float32 values (rescale, then normalise).

    Same arithmetic as NumPy's path: the rescale in float64 then cast to float32, the
    normalisation in float32, so values match to the last bits.
    """
    values = levels * settings.rescale_factor if settings.do_rescale else levels
    values = values.to(torch.float32)
    if settings.do_normalize:
        mean = torch.tensor(settings.image_mean, dtype=torch.float32, device=values.device).view(-1, 1, 1)
        std = torch.tensor(settings.image_std, dtype=torch.float32, device=values.device).view(-1, 1, 1)
        values = (values - mean) / std
    return values


def _qwen_pixels(levels: Tensor, settings: _Settings, quantize: bool) -> list[tuple[Tensor, Tensor]]:
    """Same-size images ``[N, 3, H, W]`` -> per image (patch rows, ``[1, 3]`` grid), as Qwen2-VL's processor."""
    n, channels, height, width = levels.shape
    ps, merge, temporal = settings.patch_size, settings.merge_size, settings.temporal_patch_size
    if settings.do_resize:
        lo, hi = _size_value(settings.size, "shortest_edge"), _size_value(settings.size, "longest_edge")
        if lo is None or hi is None:
            raise ValueError(f"Qwen's size needs shortest_edge and longest_edge, got {settings.size}")
        height, width = smart_resize(height, width, factor=ps * merge, min_pixels=lo, max_pixels=hi)
        levels = pil_resize(levels, (height, width), settings.resample, quantize=quantize)
    if height % (ps * merge) or width % (ps * merge):
        raise ValueError(f"{height}x{width} images are not multiples of patch_size * merge_size = {ps * merge}")
    values = _normalize(levels, settings)
    grid_h, grid_w = height // ps, width // ps
    # (C, gh/m, m, p, gw/m, m, p) -> (gh/m, gw/m, m, m, C, [t], p, p): the merge-window order of
    # Qwen2VLImageProcessorPil.patchify; a still image fills every temporal slot of its patch.
    patches = values.reshape(n, channels, grid_h // merge, merge, ps, grid_w // merge, merge, ps)
    patches = patches.permute(0, 2, 5, 3, 6, 1, 4, 7).unsqueeze(6)
    patches = patches.expand(*patches.shape[:6], temporal, ps, ps)
    rows = patches.reshape(n, grid_h * grid_w, channels * temporal * ps * ps)
    grid = torch.tensor([[1, grid_h, grid_w]], dtype=torch.long)
    return [(rows[i], grid) for i in range(n)]


def _internvl_pixels(levels: Tensor, settings: _Settings, quantize: bool) -> list[tuple[Tensor, None]]:
    """Same-size images ``[N, 3, H, W]`` -> per image ``[tiles, 3, h, w]``, as GotOcr2ImageProcessorPil."""
    tile_h, tile_w = _size_value(settings.size, "height"), _size_value(settings.size, "width")
    if tile_h is None or tile_w is None:
        raise ValueError(f"InternVL's size needs height and width, got {settings.size}")
    height, width = levels.shape[-2:]
    if settings.crop_to_patches and settings.max_patches > 1:
        # Dynamic tiling: resize to a canvas of whole tiles, cut it row-major, add a thumbnail.
        columns, rows = get_optimal_tiled_canvas(
            (height, width), (tile_h, tile_w), settings.min_patches, settings.max_patches
        )
        canvas = pil_resize(levels, (tile_h * rows, tile_w * columns), settings.resample, quantize=quantize)
        tiles = [
            canvas[..., r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w]
            for r in range(rows)
            for c in range(columns)
        ]
        if len(tiles) != 1:
            tiles.append(pil_resize(levels, (tile_h, tile_w), settings.resample, quantize=quantize))
        stacked = torch.stack(tiles, dim=1)  # [N, tiles, 3, h, w]
    else:
        if settings.do_resize:
            levels = pil_resize(levels, (tile_h, tile_w), settings.resample, quantize=quantize)
        stacked = levels.unsqueeze(1)
    values = _normalize(stacked.flatten(0, 1), settings).unflatten(0, stacked.shape[:2])
    return [(values[i], None) for i in range(values.shape[0])]


def _image_list(images: Tensor | Sequence[Tensor]) -> list[Tensor]:
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"Expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        return list(images.unbind(0))
    return list(images)


def per_image_pixel_inputs(
    processor: Any, images: Tensor | Sequence[Tensor], *, quantize: bool = True
) -> list[tuple[Tensor, Tensor | None]]:
    """Per image: its pixel rows (Qwen) or tiles (InternVL), and its ``[1, 3]`` grid (Qwen) or None."""
    settings = _settings(processor)
    items = _image_list(images)
    for item in items:
        if item.dim() != 3 or item.shape[0] != 3:
            raise ValueError(f"Expected RGB images [3, H, W] with values in [0, 1], got shape {tuple(item.shape)}")
    out: list[tuple[Tensor, Tensor | None] | None] = [None] * len(items)
    # Same-size images are processed as one batch (one matmul per pass).
    groups: dict[tuple[int, int], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((item.shape[-2], item.shape[-1]), []).append(i)
    for indices in groups.values():
        batch = torch.stack([items[i] for i in indices])
        # What to_pil_images does: round(255 x) clipped to uint8, here straight-through.
        levels = _to_uint8_levels(batch.to(_compute_dtype(batch.device)) * 255.0, quantize)
        family_pixels = _qwen_pixels if settings.family == "qwen" else _internvl_pixels
        for i, result in zip(indices, family_pixels(levels, settings, quantize)):
            out[i] = result
    return out  # type: ignore[return-value]


def join_pixel_inputs(per_image: Sequence[tuple[Tensor, Tensor | None]]) -> dict[str, Tensor]:
    """Per-image pixel inputs (:func:`per_image_pixel_inputs`) as one batch's ``pixel_values`` (and ``image_grid_thw``)."""
    pixel_values = torch.cat([p for p, _ in per_image])
    if per_image and per_image[0][1] is not None:
        grids = torch.cat([g for _, g in per_image if g is not None])
        return {"pixel_values": pixel_values, "image_grid_thw": grids}
    return {"pixel_values": pixel_values}


def pixel_inputs_from_tensor(
    processor: Any, images: Tensor | Sequence[Tensor], *, quantize: bool = True
) -> dict[str, Tensor]:
    """The processor's pixel inputs for image tensors, as a differentiable torch function.

    Equals ``processor(images=to_pil_images(images), ...)``'s pixel entries (float32 rounding
    apart, see the module docstring for the measured differences), with gradients to ``images``.

    Args:
        processor: A backbone's processor (``Backbone.processor``; its per-call image settings, such
            as InternVL's ``crop_to_patches``, are honoured) or a bare image processor
            (``Qwen2VLImageProcessorPil`` or ``GotOcr2ImageProcessorPil``).
        images: ``[B, 3, H, W]`` RGB in ``[0, 1]``, or a sequence of ``[3, H, W]`` tensors of any
            sizes. Any float dtype and device; values outside ``[0, 1]`` are clipped in the forward
            pass like the uint8 conversion would.
        quantize: Round to uint8 levels where the PIL pipeline does (the conversion to PIL and each
            resampling pass), forward only. False gives a smooth function, off by about one level.

    Returns:
        Qwen families: ``pixel_values`` ``[sum(t*h*w), C*T*P*P]`` (float32) and ``image_grid_thw``
        ``[B, 3]`` (int64, on CPU like the processor's); InternVL: ``pixel_values``
        ``[tiles, 3, H, W]`` (float32). Pixel values are on ``images``' device.

    Raises:
        TypeError: For an image processor without a differentiable path here.
        ValueError: For images that are not ``[3, H, W]``.
    """
    return join_pixel_inputs(per_image_pixel_inputs(processor, images, quantize=quantize))


def to_pil_images(images: Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` tensors in ``[0, 1]`` -> RGB PIL images (``round(255 x)``, clipped), no gradients.

    This is the conversion the differentiable path reproduces, with the same arithmetic (float64,
    halves up). diffusers' ``numpy_to_pil`` rounds in float32, half to even: the same image except,
    rarely, one level at a pixel within float32 rounding of a half level.
    """
    levels = torch.floor(images.detach().cpu().to(torch.float64) * 255.0 + 0.5).clamp(0, 255)
    arrays = levels.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(a), mode="RGB") for a in arrays]


def pil_to_tensor(image: Image.Image) -> Tensor:
    """An RGB PIL image -> ``[3, H, W]`` float in ``[0, 1]``; exact levels/255 (rounding recovers them)."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).to(torch.float64) / 255.0
