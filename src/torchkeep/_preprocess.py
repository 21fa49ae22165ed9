"""Image -> input tensor exactly as a model's spec says; the one pipeline training and prediction share.

``transform_for(spec)`` is built from ``spec.preprocessing`` with ``torchvision.transforms.v2``:
EXIF orientation, conversion to the model's channels (RGBA, palette, CMYK, 16-bit and grayscale images
included), resize, center crop, scaling to [0, 1], normalisation. The trainer and ``predict`` both call it,
so the preprocessing at prediction time cannot drift from the one the model was trained with.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from torchkeep._spec import _CHANNELS as _spec_channels
from torchkeep._spec import ModelSpec
from torchkeep.data import open_dataset
from torchkeep.errors import InputError, TorchkeepWarning, UsageError

__all__ = ["ToModelImage", "load_image", "training_background", "transform_for"]

_CHANNELS = {mode: n for n, mode in _spec_channels.items()}  # "L" -> 1, "RGB" -> 3, "RGBA" -> 4


def _spec_of(spec: Any) -> ModelSpec:
    """Accept a ModelSpec or anything carrying one (a model built or loaded by torchkeep)."""
    if isinstance(spec, ModelSpec):
        return spec
    inner = getattr(spec, "torchkeep_spec", None)
    if isinstance(inner, ModelSpec):
        return inner
    raise UsageError(
        f"expected a torchkeep ModelSpec (or a model with .torchkeep_spec), not {type(spec).__name__}",
        fix="pass model.torchkeep_spec, or build/load the model with torchkeep",
    )


def _adapt_channels(t: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, H, W) with C in 1/2/3/4 -> (channels, H, W); alpha is dropped, gray is repeated."""
    c = t.shape[0]
    if c == 2:  # gray + alpha
        t, c = t[:1], 1
    if c == 4 and channels != 4:
        t, c = t[:3], 3
    if c == channels:
        return t
    if c == 1:
        rgb = t.expand(3, *t.shape[1:])
        if channels == 4:
            opaque = torch.full_like(t, 255 if t.dtype == torch.uint8 else 1.0)
            return torch.cat([rgb, opaque])
        return rgb.contiguous()
    if c == 3 and channels == 1:
        f = t.float()
        gray = (0.299 * f[0] + 0.587 * f[1] + 0.114 * f[2]).unsqueeze(0)  # ITU-R 601-2, as PIL's convert("L")
        return gray.round().to(torch.uint8) if t.dtype == torch.uint8 else gray
    if c == 3 and channels == 4:
        opaque = torch.full_like(t[:1], 255 if t.dtype == torch.uint8 else 1.0)
        return torch.cat([t, opaque])
    raise InputError(f"cannot turn a {c}-channel image into {channels} channels")


# ------------------------------------------------------------------------- drawings made of transparency

# A drawing saved with a transparent background (a digit drawn in a paint program) often has the same colour
# in every pixel, the strokes only in its alpha channel: dropping alpha leaves a blank image that still gets
# a confident class. Such an image is composited onto the background of the model's training images, its
# strokes in a colour that stands out from it.
_MIN_CONTRAST = 64  # grey levels between ink and background for strokes to stand out


def _alpha_drawing(img: Image.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """(alpha in [0, 1] as (H, W), the drawing's colour as (3,)) when the image's picture is only in its
    alpha channel: transparency varies, colours do not. None for any other image."""
    if "A" not in img.getbands():
        return None
    alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
    if alpha.size == 0 or float(alpha.max() - alpha.min()) < 0.5:
        return None  # (nearly) uniform transparency: the colours carry the picture
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    if float(rgb.mean(axis=2).std()) > 8.0:
        return None  # the colours draw it too (e.g. black strokes, white transparent pixels)
    return alpha, rgb[alpha >= 0.5].mean(axis=0)


@lru_cache(maxsize=16)
def _dataset_background(data: str) -> int | None:
    """The grey level around the training images of ``data`` (median of their borders), when the dataset
    opens here without a download; None otherwise."""
    try:
        src = open_dataset(data, split="train", download=False)
        if not len(src):
            return None
        borders = []
        for i in np.linspace(0, len(src) - 1, num=min(32, len(src))).astype(int):
            g = np.asarray(src.image(int(i)).convert("L"), dtype=np.float32)
            borders.append(float(np.median(np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]]))))
        return round(float(np.median(borders)))
    except Exception:  # not downloaded, moved, unreadable: unknown
        return None


def training_background(spec: Any) -> int | None:
    """The background grey level (0-255) of the images the model was trained on, from the dataset its spec
    records (``extra.training.data``) when that dataset can be read here; None when unknown."""
    s = _spec_of(spec)
    trained = dict((s.extra or {}).get("training") or {})
    data = trained.get("data") or s.provenance.dataset
    return _dataset_background(str(data)) if data else None


class ToModelImage:
    """PIL image / numpy array / tensor -> ``tv_tensors.Image`` with the model's channels.

    8-bit images stay uint8 (so resizing matches torchvision's pretrained pipelines); 16-bit and float
    images become float32 in [0, 1] (16-bit PNGs are scaled by 65535, never clipped to 255). An image whose
    drawing is only in its alpha channel is composited onto ``background`` (see :func:`training_background`),
    its strokes in a colour that stands out from it; when the background is unknown, onto the colour
    opposite the strokes, with a ``TorchkeepWarning``.

    Args:
        mode: "L", "RGB" or "RGBA".
        background: the training images' background grey level, or a function returning it (or None when
            unknown), called once, on the first such image.
    """

    def __init__(self, mode: str, background: int | Callable[[], int | None] | None = None):
        if mode not in _CHANNELS:
            raise UsageError(f"unknown channel mode {mode!r}", fix="use L, RGB or RGBA")
        self.mode = mode
        self.channels = _CHANNELS[mode]
        self._background = background
        self._warned = False

    def _composite(self, img: Image.Image) -> Image.Image:
        found = _alpha_drawing(img)
        if found is None:
            return img
        alpha, ink = found
        if callable(self._background):
            self._background = self._background()
        bg = self._background
        lum = float(ink.mean())
        if bg is None:
            bg = 255 if lum < 128 else 0
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"an image's drawing is only in its alpha channel (transparent background): composited as "
                    f"{'dark' if bg else 'light'} strokes on {'white' if bg else 'black'}; the background of the "
                    "model's training images is not known here, so check they looked like that (digits and "
                    "MNIST-style data are light on dark: invert such a drawing first)",
                    TorchkeepWarning,
                    stacklevel=2,
                )
        elif abs(lum - bg) < _MIN_CONTRAST:
            ink = np.full(3, 255.0 - bg)  # ink the colour of the background would vanish: the opposite grey
        a = alpha[..., None]
        out = np.float32(bg) * (1.0 - a) + ink.astype(np.float32) * a
        return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")

    def __repr__(self) -> str:
        return f"ToModelImage(mode={self.mode!r})"

    def _from_pil(self, img: Image.Image) -> torch.Tensor:
        img = ImageOps.exif_transpose(img) or img  # phone photos: honour the EXIF orientation
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            arr = np.asarray(img).astype(np.float32)
            if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
                arr /= 65535.0
            elif img.mode == "I" or arr.max(initial=0) > 1.0:
                arr /= 255.0
            t = torch.from_numpy(np.clip(arr, 0.0, 1.0)).unsqueeze(0)
            return _adapt_channels(t, self.channels)
        if img.mode == "P":
            # palette images may carry transparency; go through RGBA so PIL keeps it right
            img = img.convert("RGBA")
        if self.mode != "RGBA":  # a 4-channel model takes alpha as it is
            img = self._composite(img)
        if img.mode != self.mode:
            img = img.convert(self.mode)
        arr = np.array(img, dtype=np.uint8, copy=True)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def __call__(self, image: Any) -> torch.Tensor:
        from torchvision import tv_tensors

        if isinstance(image, Image.Image):
            t = self._from_pil(image)
        elif isinstance(image, np.ndarray | torch.Tensor):
            t = torch.as_tensor(image)
            if isinstance(image, np.ndarray):  # numpy images are (H, W) or (H, W, C)
                t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
            elif t.ndim == 2:
                t = t.unsqueeze(0)
            if t.ndim != 3 or t.shape[0] not in (1, 2, 3, 4):
                raise InputError(f"expected an image of shape (C, H, W) or (H, W[, C]), got {tuple(t.shape)}")
            if t.dtype == torch.uint16 or t.dtype == torch.int32:
                t = t.float() / 65535.0
            elif t.dtype != torch.uint8:
                t = t.float()
            t = _adapt_channels(t, self.channels)
        else:
            raise InputError(f"expected a PIL image, numpy array or tensor, not {type(image).__name__}")
        return tv_tensors.Image(t)


def _clamp01(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(0.0, 1.0)


def _to_plain(t: torch.Tensor) -> torch.Tensor:
    # tv_tensors.Image is a Tensor subclass; models and users want a plain tensor.
    return t.as_subclass(torch.Tensor)


def transform_for(spec: Any, *, train: bool = False, augment: bool = False) -> Callable[[Any], torch.Tensor]:
    """The transform that turns one image into the model's input tensor ``(C, H, W)``.

    Args:
        spec: a ModelSpec, or a model with ``.torchkeep_spec``.
        train: the pipeline is for training.
        augment: with ``train``, add light random augmentation (random resized crop of 80-100 % of the
            image, rotation up to 10 degrees, brightness/contrast jitter) in place of the fixed resize/crop.
            No horizontal flips: they change the meaning of digits and letters.

    Returns:
        A ``torchvision.transforms.v2.Compose`` taking a PIL image (any mode), a numpy array or a tensor.

    Raises:
        UsageError: ``augment`` without ``train``, or mean/std that do not fit the channels.
    """
    from torchvision.transforms import InterpolationMode, v2

    s = _spec_of(spec)
    if augment and not train:
        raise UsageError("augment=True is for training pipelines", fix="pass train=True with augment=True")
    pre = s.preprocessing
    channels = _CHANNELS.get(pre.channels, 3)
    interp = InterpolationMode(pre.interpolation)
    steps: list[Any] = [ToModelImage(pre.channels, background=partial(training_background, s))]
    resize, crop = pre.resize, pre.crop
    if resize is None and crop is None:
        resize = list(s.input_size)  # the model needs a fixed size even if the spec names no resize
    final = crop or (resize if resize is not None and len(resize) == 2 else list(s.input_size))
    if train and augment:
        steps.append(
            v2.RandomResizedCrop(tuple(final), scale=(0.8, 1.0), interpolation=interp, antialias=True)
        )
        steps.append(v2.RandomRotation(10, interpolation=InterpolationMode.BILINEAR))
        steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2))
    else:
        if resize is not None:
            size = resize[0] if len(resize) == 1 else tuple(resize)
            steps.append(v2.Resize(size, interpolation=interp, antialias=True))
        if crop is not None:
            steps.append(v2.CenterCrop(tuple(crop)))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    # float sources (16-bit PNGs) overshoot [0, 1] slightly when resized with antialias/bicubic
    steps.append(v2.Lambda(_clamp01))
    if pre.mean is not None and pre.std is not None:
        for name, values in (("mean", pre.mean), ("std", pre.std)):
            if len(values) not in (1, channels):
                raise UsageError(
                    f"preprocessing.{name} has {len(values)} values for {channels}-channel input",
                    fix=f"give 1 or {channels} values in the spec",
                )
        steps.append(v2.Normalize(mean=list(pre.mean), std=list(pre.std)))
    steps.append(v2.Lambda(_to_plain))
    return v2.Compose(steps)


def load_image(
    image: str | os.PathLike[str] | Image.Image | bytes,
    spec: Any,
    transform: Callable[[Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Open an image file (or take a PIL image) and preprocess it for the model.

    Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) holds; its warning zone (1-2x the
    limit) is refused too, so a huge image cannot exhaust memory in a batch job.

    Args:
        image: a path to any image Pillow reads, a PIL image, or the bytes of an image file (an upload).
        spec: a ModelSpec, or a model with ``.torchkeep_spec``.
        transform: ``transform_for(spec)`` when the caller built it once for many images.

    Returns:
        The input tensor ``(C, H, W)``, float32; add a batch dimension with ``.unsqueeze(0)``.

    Raises:
        InputError: the file is missing, is not an image Pillow can read, or is a decompression bomb.
    """
    if transform is None:
        transform = transform_for(spec)
    if isinstance(image, Image.Image):
        try:  # a lazily opened image decodes here: truncation surfaces now (struct.error from PNG chunks)
            return transform(image)
        except (OSError, SyntaxError, ValueError, struct.error) as exc:
            raise _unreadable(exc, None) from None
    p: Path | None = None
    source: Path | io.BytesIO
    if isinstance(image, bytes):
        source = io.BytesIO(image)
    else:
        source = p = Path(os.fspath(image)).expanduser()
        if not p.is_file():
            raise InputError("no such image file", path=p, fix="check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                im.load()  # decode now, inside the filter, so truncation and bombs are caught here
                return transform(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"refused: decompression bomb ({exc})", path=p,
                         fix="resize the image, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it") from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:  # Pillow's errors for bad images
        raise _unreadable(exc, p) from None


def _unreadable(exc: Exception, path: Path | None) -> InputError:
    return InputError(
        f"cannot read the image ({exc})", path=path, fix="pass a PNG, JPEG, BMP, GIF, TIFF or WebP file"
    )
