"""Image classification datasets: ``digits`` (embedded), ``cifar10``, ``fashion-mnist``, ``folder:PATH``.

Every dataset is opened as an :class:`ImageSource`: a list of PIL images (loaded lazily) with integer
labels and class names. Preprocessing is *not* done here: the training loop applies the model spec's
transform (``torchkeep._preprocess.transform_for``) so that training, evaluation and prediction feed
the model exactly the same way.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from torchkeep.errors import InputError, UsageError

__all__ = [
    "DATASET_NAMES",
    "ImageSource",
    "TransformedSubset",
    "open_dataset",
    "split_indices",
]

#: Names accepted by :func:`open_dataset` (``folder:PATH`` takes a directory).
DATASET_NAMES = ("digits", "cifar10", "fashion-mnist", "folder:PATH")

DEFAULT_ROOT = Path(os.environ.get("TORCHKEEP_DATA", Path.home() / ".cache" / "torchkeep" / "data"))

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class ImageSource:
    """A labelled image dataset, before any preprocessing.

    Attributes:
        name: the dataset name as given (``digits``, ``cifar10``, ``folder:/path``).
        classes: class names, index ``i`` is label ``i``.
        targets: one label per image.
        channels: native channels of the images (1 grayscale, 3 colour).
        image_size: native ``(height, width)`` when every image has the same size, else ``None``.
        skipped: files that were not usable images and were left out (ImageFolder only).
        split: which split of the dataset this is (``train``, ``test`` or ``all``).
    """

    name: str
    classes: list[str]
    targets: list[int]
    channels: int
    image_size: tuple[int, int] | None
    get_image: Callable[[int], Image.Image] = field(repr=False)
    skipped: list[str] = field(default_factory=list)
    split: str = "train"

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def image(self, index: int) -> Image.Image:
        """The PIL image at ``index`` (native mode and size)."""
        return self.get_image(index)


class TransformedSubset(Dataset):
    """A torch-style dataset over ``indices`` of an :class:`ImageSource`, applying ``transform``.

    ``cache=True`` keeps transformed samples in memory: only for deterministic transforms (validation),
    where it removes the per-epoch decode cost without changing a single value.
    """

    def __init__(self, source: ImageSource, indices: Sequence[int], transform: Callable | None, cache: bool = False):
        self.source = source
        self.indices = list(indices)
        self.transform = transform
        self._cache: dict[int, Any] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        j = self.indices[i]
        img = self.source.get_image(j)
        x = self.transform(img) if self.transform is not None else img
        item = (x, self.source.targets[j])
        if self._cache is not None:
            self._cache[i] = item
        return item

    @property
    def targets(self) -> list[int]:
        return [self.source.targets[j] for j in self.indices]


class _ArrayImages:
    """Images from a uint8 array (N, H, W[, C]); a class, not a lambda, so DataLoader workers can pickle it."""

    def __init__(self, array: np.ndarray, mode: str):
        self.array = array
        self.mode = mode

    def __call__(self, index: int) -> Image.Image:
        return Image.fromarray(self.array[index], mode=self.mode)


class _FileImages:
    """Images from files, opened on demand (picklable for DataLoader workers)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __call__(self, index: int) -> Image.Image:
        return _open_image(self.paths[index])


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into train and validation indices, the same way for the same ``seed``.

    Uses a private ``numpy`` generator, so the split never depends on (or changes) global RNG state.

    Args:
        n: number of samples.
        val_fraction: share of samples held out for validation (0 <= f < 1).
        seed: split seed.

    Returns:
        ``(train_indices, val_indices)``, each sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"validation fraction {val_fraction} is out of range", fix="use a value in [0, 1)")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])


def _unknown(name: str) -> UsageError:
    return UsageError(
        f"unknown dataset {name!r}",
        fix="use one of: " + ", ".join(DATASET_NAMES) + " (folder:PATH is a directory with one sub-folder per class)",
    )


def open_dataset(
    name: str, *, root: str | os.PathLike[str] | None = None, split: str = "train", download: bool = True
) -> ImageSource:
    """Open a dataset by name.

    Args:
        name: ``digits``, ``cifar10``, ``fashion-mnist`` or ``folder:PATH`` (an ImageFolder directory:
            one sub-folder per class). A bare path to an existing directory is accepted as ``folder:``.
        root: where torchvision datasets live (``--data-root``); default ``$TORCHKEEP_DATA`` or
            ``~/.cache/torchkeep/data``.
        split: ``train`` or ``test`` for datasets that ship both (cifar10, fashion-mnist); ``digits`` and
            folders have a single split (use :func:`split_indices`).
        download: let torchvision download cifar10 / fashion-mnist when they are not under ``root``.

    Returns:
        An :class:`ImageSource`.
    """
    key = name.strip()
    if key.lower() == "digits":
        return _digits()
    if key.lower().startswith("folder:"):
        return _folder(key[len("folder:") :])
    if key.lower() in ("cifar10", "cifar-10"):
        return _cifar10(Path(root) if root else DEFAULT_ROOT, split, download)
    if key.lower() in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return _fashion_mnist(Path(root) if root else DEFAULT_ROOT, split, download)
    if os.path.isdir(key):
        return _folder(key)
    raise _unknown(name)


# --- digits ------------------------------------------------------------------------------------------


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten 8x8 digits as uint8 images scaled 0..16 -> 0..255, and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # values are 0..16 (counts of set pixels in 4x4 blocks); scale to 0..255 so a PNG of a digit goes
    # through exactly the preprocessing the training images went through.
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def _digits() -> ImageSource:
    images, labels = digits_images()
    return ImageSource(
        name="digits",
        classes=[str(i) for i in range(10)],
        targets=[int(t) for t in labels],
        channels=1,
        image_size=(8, 8),
        get_image=_ArrayImages(images, "L"),
        split="all",
    )


# --- torchvision datasets ----------------------------------------------------------------------------


def _not_found(dataset: str, where: Path, fix: str, exc: Exception) -> InputError:
    return InputError(f"{dataset} not found or incomplete ({exc})", path=where, fix=fix)


class _SafeNumpyUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python batches: dicts, lists, strings and numpy arrays, nothing else.

    torchvision opens these files with plain ``pickle.load``; a file under ``--data-root`` that is not
    the genuine download could then run code. Only the globals a numpy array needs are allowed.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1"): a pure transform
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            if name == "_reconstruct":
                return _np_reconstruct()
            if name == "scalar":
                return _np_scalar()
            if module == "_codecs":
                import codecs

                return codecs.encode
            return getattr(np, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch file")


def _np_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined,no-redef]
    return _reconstruct


def _np_scalar() -> Any:
    try:
        from numpy._core.multiarray import scalar  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[attr-defined,no-redef]
    return scalar


def _check_labels(n_images: int, targets: list[int], n_classes: int, where: Path) -> None:
    """Refuse files whose labels do not match the images (a partial download, a hand-made file)."""
    if n_images != len(targets):
        raise InputError(f"{n_images} images but {len(targets)} labels", path=where)
    bad = next((t for t in targets if not 0 <= t < n_classes), None)
    if bad is not None:
        raise InputError(f"label {bad} is out of range: the dataset has {n_classes} classes", path=where)


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _SafeNumpyUnpickler(fh, encoding="latin1").load()
    except FileNotFoundError as exc:
        raise InputError("CIFAR-10 batch file is missing", path=path, fix="pass --data-root DIR holding cifar-10-batches-py/") from exc
    except Exception as exc:
        raise InputError(f"not a CIFAR-10 python batch ({exc})", path=path) from exc
    if not isinstance(obj, dict):
        raise InputError("not a CIFAR-10 python batch (expected a dict)", path=path)
    return obj


def _cifar10(root: Path, split: str, download: bool) -> ImageSource:
    from torchvision.datasets import CIFAR10

    base = root / CIFAR10.base_folder
    files = [f for f, _ in (CIFAR10.train_list if split == "train" else CIFAR10.test_list)]
    if split not in ("train", "test"):
        raise UsageError(f"cifar10 has no split {split!r}", fix="use train or test")
    if download and not all((base / f).exists() for f in files):
        try:
            # torchvision downloads and verifies the archive's md5; reading is done below, safely.
            CIFAR10(root=str(root), train=split == "train", download=True)
        except Exception as exc:
            raise _not_found("cifar10", base, "run once with internet access, or pass --data-root DIR", exc) from exc
    data: list[np.ndarray] = []
    targets: list[int] = []
    for f in files:
        entry = _read_cifar_pickle(base / f)
        if "data" not in entry:
            raise InputError("not a CIFAR-10 python batch (no 'data' entry)", path=base / f)
        try:
            batch = np.asarray(entry["data"], dtype=np.uint8)
            labels = [int(t) for t in entry.get("labels", entry.get("fine_labels", []))]
        except (TypeError, ValueError) as exc:
            raise InputError(f"not a CIFAR-10 python batch ({exc})", path=base / f) from exc
        if batch.ndim != 2 or batch.shape[1] != 3 * 32 * 32:
            per_image = batch.shape[1] if batch.ndim == 2 else "?"
            raise InputError(
                f"not a CIFAR-10 python batch: data of shape {list(batch.shape)}, {per_image} bytes per image, not 3072",
                path=base / f,
            )
        data.append(batch)
        targets.extend(labels)
    arr = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
    meta_path = base / CIFAR10.meta["filename"]
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if meta_path.exists():
        names = _read_cifar_pickle(meta_path).get(CIFAR10.meta["key"])
        if not isinstance(names, (list, tuple)):
            raise InputError(f"not a CIFAR-10 meta file (no {CIFAR10.meta['key']!r} list)", path=meta_path)
        classes = [str(c) for c in names]
    _check_labels(len(arr), targets, len(classes), base)
    arr = np.ascontiguousarray(arr)
    return ImageSource(
        name="cifar10",
        classes=classes,
        targets=targets,
        channels=3,
        image_size=(32, 32),
        get_image=_ArrayImages(arr, "RGB"),
        split=split,
    )


def _fashion_mnist(root: Path, split: str, download: bool) -> ImageSource:
    from torchvision.datasets import FashionMNIST

    if split not in ("train", "test"):
        raise UsageError(f"fashion-mnist has no split {split!r}", fix="use train or test")
    try:
        ds = FashionMNIST(root=str(root), train=split == "train", download=download)
    except Exception as exc:
        raise _not_found(
            "fashion-mnist",
            root / "FashionMNIST" / "raw",
            "run once with internet access, or pass --data-root DIR holding FashionMNIST/raw/*-ubyte",
            exc,
        ) from exc
    data = ds.data.numpy()
    targets = [int(t) for t in ds.targets]
    _check_labels(len(data), targets, len(ds.classes), root / "FashionMNIST" / "raw")
    return ImageSource(
        name="fashion-mnist",
        classes=list(ds.classes),
        targets=targets,
        channels=1,
        image_size=(int(data.shape[1]), int(data.shape[2])),
        get_image=_ArrayImages(data, "L"),
        split=split,
    )


# --- ImageFolder -------------------------------------------------------------------------------------


def _open_image(path: str) -> Image.Image:
    with open(path, "rb") as fh:
        img = Image.open(fh)
        img.load()
    return img


def _folder(path: str) -> ImageSource:
    from torchvision.datasets import ImageFolder

    root = Path(os.path.expanduser(path))
    if not root.is_dir():
        raise InputError("dataset folder does not exist", path=root, fix="use folder:PATH with one sub-folder per class")
    skipped: list[str] = []

    def is_valid(p: str) -> bool:
        # a wrong extension, or bytes that PIL cannot decode, is skipped and counted - never a crash mid-epoch
        if not p.lower().endswith(_IMAGE_EXTENSIONS):
            skipped.append(p)
            return False
        try:
            # Pillow's decompression-bomb warning zone (1-2x its pixel limit) is refused too, as load_image does
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(p) as im:
                    im.verify()
        except Exception:
            skipped.append(p)
            return False
        return True

    try:
        ds = ImageFolder(str(root), loader=_open_image, is_valid_file=is_valid, allow_empty=True)
    except FileNotFoundError as exc:
        raise InputError(
            "no class folders found", path=root, fix="put images in one sub-folder per class: DIR/cat/1.png, DIR/dog/2.png"
        ) from exc
    counts = [0] * len(ds.classes)
    for _, t in ds.samples:
        counts[t] += 1
    empty = [c for c, n in zip(ds.classes, counts) if n == 0]
    if empty:
        raise InputError(
            f"class folder {empty[0]!r} has no readable images" + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""),
            path=root / empty[0],
            fix="add images to it or remove the folder",
        )
    samples = [p for p, _ in ds.samples]
    # native channels/size from the first image: enough to pick in_channels for a model built from scratch
    first = _open_image(samples[0])
    channels = 1 if first.mode in ("L", "1", "I", "I;16", "F", "LA") else 3
    return ImageSource(
        name=f"folder:{root}",
        classes=list(ds.classes),
        targets=[int(t) for _, t in ds.samples],
        channels=channels,
        image_size=None,
        get_image=_FileImages(samples),
        skipped=sorted(skipped),
        split="all",
    )
