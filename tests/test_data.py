"""Datasets: digits, tiny CIFAR-10 / FashionMNIST files in their on-disk formats, ImageFolder edge cases."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torchkeep.data import open_dataset, split_indices
from torchkeep.errors import InputError, UsageError

CIFAR_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]


def test_digits_are_real_8x8_grayscale_images_scaled_to_255():
    src = open_dataset("digits")
    assert len(src) == 1797
    assert src.classes == [str(i) for i in range(10)]
    assert (src.channels, src.image_size, src.num_classes) == (1, (8, 8), 10)
    img = src.image(0)
    assert img.mode == "L" and img.size == (8, 8)
    from sklearn.datasets import load_digits

    # sklearn's 0..16 values map onto 0..255 (16 -> 255, 8 -> 128)
    raw = load_digits().images[0]
    assert np.array_equal(np.asarray(img), np.rint(raw * 255 / 16).astype(np.uint8))
    assert sorted(set(src.targets)) == list(range(10))


def test_split_is_deterministic_disjoint_and_complete():
    a_train, a_val = split_indices(100, 0.2, seed=3)
    b_train, b_val = split_indices(100, 0.2, seed=3)
    _, c_val = split_indices(100, 0.2, seed=4)
    assert (a_train, a_val) == (b_train, b_val)
    assert a_val != c_val
    assert len(a_val) == 20 and sorted(a_train + a_val) == list(range(100))
    with pytest.raises(UsageError, match="out of range"):
        split_indices(10, 1.5, 0)


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(UsageError, match=r"unknown dataset 'mnistt'.*digits, cifar10, fashion-mnist, folder:PATH"):
        open_dataset("mnistt")


def _write_cifar(root: Path, per_batch: int = 2) -> np.ndarray:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for k, name in enumerate([*CIFAR_FILES, "test_batch"]):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        if first is None:
            first = data[0]
        entry = {"batch_label": name, "labels": [(k + i) % 10 for i in range(per_batch)], "data": data}
        (base / name).write_bytes(pickle.dumps(entry, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}))
    assert first is not None
    return first


def test_cifar10_reads_the_python_batches_from_data_root(tmp_path):
    first = _write_cifar(tmp_path)
    src = open_dataset("cifar10", root=tmp_path, download=False)
    assert len(src) == 10 and src.split == "train"
    assert src.classes[0] == "airplane" and src.channels == 3 and src.image_size == (32, 32)
    img = src.image(0)
    assert img.mode == "RGB" and img.size == (32, 32)
    # CIFAR stores planes R, G, B of 1024 bytes each, row-major
    assert np.asarray(img)[0, 0].tolist() == [first[0], first[1024], first[2048]]
    test = open_dataset("cifar10", root=tmp_path, split="test", download=False)
    assert len(test) == 2 and test.split == "test"


def test_cifar10_batch_that_runs_code_is_refused(tmp_path):
    _write_cifar(tmp_path)
    marker = tmp_path / "PWNED_MARKER"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": Payload()}))
    with pytest.raises(InputError, match=r"data_batch_3: not a CIFAR-10 python batch \(global io.open is not allowed"):
        open_dataset("cifar10", root=tmp_path, download=False)
    assert not marker.exists()


def test_cifar10_missing_names_the_folder_and_data_root(tmp_path):
    with pytest.raises(InputError, match=r"cifar-10-batches-py.*missing.*--data-root"):
        open_dataset("cifar10", root=tmp_path, download=False)


def _idx(path: Path, magic: int, dims: list[int], payload: bytes) -> None:
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload)


def test_fashion_mnist_reads_idx_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
    for prefix, n in (("train", 3), ("t10k", 2)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", 0x803, [n, 28, 28], imgs[:n].tobytes())
        _idx(raw / f"{prefix}-labels-idx1-ubyte", 0x801, [n], bytes([9, 0, 3][:n]))
    src = open_dataset("fashion-mnist", root=tmp_path, download=False)
    assert len(src) == 3 and src.targets == [9, 0, 3]
    assert src.classes[9] == "Ankle boot" and (src.channels, src.image_size) == (1, (28, 28))
    assert np.array_equal(np.asarray(src.image(1)), imgs[1])
    assert len(open_dataset("fashion-mnist", root=tmp_path, split="test", download=False)) == 2


def test_fashion_mnist_missing_says_how_to_fix(tmp_path):
    with pytest.raises(InputError, match=r"FashionMNIST/raw: fashion-mnist not found.*--data-root"):
        open_dataset("fashion-mnist", root=tmp_path, download=False)


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "shapes"
    for cls, value in (("circle", 40), ("square", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 12), (value, i, 0)).save(root / cls / f"{i}.png")
    return root


def test_folder_skips_and_counts_corrupt_and_non_image_files(tmp_path):
    root = _folder(tmp_path)
    (root / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "square" / "notes.txt").write_text("hello")
    src = open_dataset(f"folder:{root}")
    assert src.classes == ["circle", "square"] and src.class_to_idx == {"circle": 0, "square": 1}
    assert len(src) == 6 and src.targets.count(1) == 3
    assert sorted(Path(p).name for p in src.skipped) == ["broken.png", "notes.txt"]
    assert src.channels == 3 and src.image(0).size == (10, 12)
    # a bare directory path works too
    assert len(open_dataset(str(root))) == 6


def test_folder_with_an_empty_class_names_it(tmp_path):
    root = _folder(tmp_path)
    (root / "triangle").mkdir()
    (root / "triangle" / "junk.jpg").write_bytes(b"no image here")
    with pytest.raises(InputError, match=r"shapes/triangle: class folder 'triangle' has no readable images"):
        open_dataset(f"folder:{root}")


def test_folder_that_does_not_exist(tmp_path):
    with pytest.raises(InputError, match="dataset folder does not exist"):
        open_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "flat").mkdir()
    with pytest.raises(InputError, match="no class folders found"):
        open_dataset(f"folder:{tmp_path / 'flat'}")


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"labels": [1, 2]}, r"data_batch_2: not a CIFAR-10 python batch \(no 'data'"),
        ({"data": np.zeros((2, 100), np.uint8), "labels": [1, 2]}, r"data_batch_2: .*100 bytes per image, not 3072"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [1]}, r"cifar-10-batches-py: 10 images but 9 labels"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 12]}, r"cifar-10-batches-py: label 12 is out of range"),
    ],
)
def test_cifar10_batch_of_the_wrong_shape_is_refused(tmp_path, entry, match):
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(entry))
    with pytest.raises(InputError, match=match):
        open_dataset("cifar10", root=tmp_path, download=False)


@pytest.mark.parametrize(
    ("labels", "match"),
    [(bytes([1, 2]), r"FashionMNIST/raw: 3 images but 2 labels"), (bytes([1, 2, 10]), r"label 10 is out of range")],
)
def test_fashion_mnist_labels_that_do_not_match_the_images_are_refused(tmp_path, labels, match):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        _idx(raw / f"{prefix}-images-idx3-ubyte", 0x803, [3, 28, 28], bytes(3 * 28 * 28))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", 0x801, [len(labels)], labels)
    with pytest.raises(InputError, match=match):
        open_dataset("fashion-mnist", root=tmp_path, download=False)


def test_cifar10_meta_without_label_names_is_refused(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({"num_vis": 3072}))
    with pytest.raises(InputError, match=r"batches.meta: not a CIFAR-10 meta file \(no 'label_names' list\)"):
        open_dataset("cifar10", root=tmp_path, download=False)


def test_folder_leaves_out_decompression_bombs_warning_zone_included(tmp_path, monkeypatch):
    """An image over Pillow's pixel limit, or in its 1-2x warning zone, is skipped like a corrupt file."""
    root = _folder(tmp_path)
    Image.new("1", (40, 40)).save(root / "circle" / "huge.png")  # 1,600 pixels: over the limit set below
    Image.new("1", (26, 26)).save(root / "square" / "big.png")  # 676 pixels: in the warning zone (1-2x)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)
    src = open_dataset(f"folder:{root}")
    assert sorted(Path(p).name for p in src.skipped) == ["big.png", "huge.png"] and len(src) == 6
