"""Image readers: IDX files (MNIST format), the MNIST train/test convention, and ImageFolder trees."""

import gzip
import struct

import numpy as np
import pytest
import torch

from seqbackbone.data import load_image_folder, load_mnist, read_idx


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    dt = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    raw = bytes([0, 0, codes[np.dtype(dt)], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(dt).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, compress, dtype):
    rng = np.random.default_rng(0)
    a = (rng.random((3, 5, 2)) * 100).astype(dtype)
    write_idx(tmp_path / "a.idx", a, compress)
    b = read_idx(tmp_path / "a.idx")
    assert b.shape == a.shape and np.array_equal(b, a)


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01abcd")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 4), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_mnist_test_set_only_is_split(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 30).astype(np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, compress=True)
    train, test = load_mnist(tmp_path, n_train_from_test=24)
    assert train.images.shape == (24, 1, 28, 28) and test.images.shape == (6, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    assert torch.equal(test.images[:, 0], torch.from_numpy(images[24:]))
    assert test.labels.tolist() == labels[24:].tolist()


def test_mnist_with_both_sets_and_missing(tmp_path):
    for prefix, n in (("train", 5), ("t10k", 3)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.zeros((n, 28, 28), np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8))
    train, test = load_mnist(tmp_path)
    assert len(train.labels) == 5 and len(test.labels) == 3
    with pytest.raises(ValueError, match="no MNIST test files"):
        load_mnist(tmp_path / "..")


def test_image_folder(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(2)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    train, test = load_image_folder(tmp_path, test_fraction=0.2)
    assert train.classes == ["cat", "dog"]
    assert len(train.labels) + len(test.labels) == 40 and len(test.labels) > 0
    assert train.images.shape[1:] == (1, 6, 6) and train.images.dtype == torch.uint8
    assert "skipped 1" in capsys.readouterr().err
