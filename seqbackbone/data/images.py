"""Image readers: MNIST-style IDX files (plain or gzip) and ImageFolder trees (`root/{class}/*.png`)."""

from __future__ import annotations

import gzip
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# IDX type codes (third header byte) -> numpy dtype, big-endian as the format stores them.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class ImageSet:
    """images: uint8 (N, C, H, W); labels: long (N,); classes[i] names label i."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: two zero bytes, a type code, the number of dimensions, big-endian
    uint32 sizes, then the data), gzip or not. Raises ValueError for a missing, truncated or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"IDX file {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(shape)) if shape else 1
    body = raw[4 + 4 * ndim :]
    if len(body) < count * dtype.itemsize:
        raise ValueError(f"IDX file {path} is truncated: header says {shape}, found {len(body)} bytes of data")
    return np.frombuffer(body, dtype=dtype, count=count).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    return None


def load_mnist(root: str | Path, n_train_from_test: int = 8000) -> tuple[ImageSet, ImageSet]:
    """MNIST train and test sets from a folder of IDX files (`train-images-idx3-ubyte[.gz]`, ...).

    When only the test files (`t10k-*`) are present, its first `n_train_from_test` images are the training set
    and the rest the test set. Images come back as uint8 (N, 1, 28, 28).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"MNIST folder {root} does not exist or is not a folder")

    def pair(prefix: str) -> ImageSet | None:
        img, lab = _find(root, f"{prefix}-images-idx3-ubyte"), _find(root, f"{prefix}-labels-idx1-ubyte")
        if img is None or lab is None:
            return None
        x, y = read_idx(img), read_idx(lab)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"MNIST files in {root} disagree: images {x.shape}, labels {y.shape}")
        images = torch.from_numpy(x.copy())[:, None]  # (N, 1, 28, 28)
        return ImageSet(images, torch.from_numpy(y.astype(np.int64)), [str(i) for i in range(10)])

    train, test = pair("train"), pair("t10k")
    if test is None:
        raise ValueError(f"no MNIST test files (t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in {root}")
    if train is None:
        n = n_train_from_test
        if not 0 < n < len(test.labels):
            raise ValueError(f"n_train_from_test must be in (0, {len(test.labels)}), got {n}")
        train = ImageSet(test.images[:n], test.labels[:n], test.classes)
        test = ImageSet(test.images[n:], test.labels[n:], test.classes)
    return train, test


def _read_image_dir(root: Path, classes: list[str] | None, mode: str, quiet: bool) -> ImageSet:
    from PIL import Image

    if classes is None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders")
    images, labels, skipped, size = [], [], [], None
    for label, name in enumerate(classes):
        for p in sorted((root / name).rglob("*")):
            if not (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                continue
            try:
                with Image.open(p) as im:
                    arr = np.asarray(im.convert(mode))
            except Exception as err:  # PIL raises many error types for broken files
                skipped.append(f"{p}: {err}")
                continue
            arr = arr[:, :, None] if arr.ndim == 2 else arr  # (H, W, C)
            if size is None:
                size = arr.shape
            if arr.shape != size:
                skipped.append(f"{p}: size {arr.shape[:2]} differs from {size[:2]}")
                continue
            images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
            labels.append(label)
    if skipped and not quiet:
        print(f"skipped {len(skipped)} unreadable or odd-sized images in {root}, first: {skipped[0]}", file=sys.stderr)
    if not images:
        raise ValueError(f"no readable images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.long), classes)


def load_image_folder(
    root: str | Path, mode: str = "L", test_fraction: float = 0.1, quiet: bool = False
) -> tuple[ImageSet, ImageSet]:
    """Train and test sets from an ImageFolder tree: `root/train/{class}/*` + `root/test/{class}/*` when both
    exist, else `root/{class}/*` with a fixed `test_fraction` of files (chosen by a hash of the name) held out.

    `mode` is a PIL mode ("L" grey, "RGB"); all images must share one size (others are skipped and counted).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = _read_image_dir(root / "train", None, mode, quiet)
        return train, _read_image_dir(root / "test", train.classes, mode, quiet)
    full = _read_image_dir(root, None, mode, quiet)
    # Names are needed for a stable split; list them in the same order as _read_image_dir read them.
    names = [
        str(p.relative_to(root)) for c in full.classes for p in sorted((root / c).rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if len(names) != len(full.labels):  # some files were skipped: fall back to position for the hash
        names = [str(i) for i in range(len(full.labels))]
    is_test = torch.tensor([zlib.crc32(n.encode()) % 1000 < test_fraction * 1000 for n in names])
    return (
        ImageSet(full.images[~is_test], full.labels[~is_test], full.classes),
        ImageSet(full.images[is_test], full.labels[is_test], full.classes),
    )
