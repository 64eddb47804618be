"""Data sets as the estimators take them: inputs in [0, 1], integer labels.

Nothing here downloads unless asked (``download=False`` everywhere): every loader
reads a local directory.  Normalisation (mean/std) is not applied; it is the
network's first layer (:class:`smoothsk.models.Normalize`), so that σ and certified
radii are in [0, 1] pixel units.

Small data sets (digits, Fashion-MNIST, MNIST) come back as numpy arrays; CIFAR-10
and ImageNet as torch ``Dataset`` objects of ``(image, class_index)`` with the
papers' augmentation, which every estimator's ``fit`` / ``certify`` accepts (pass
``classes=list(range(C))`` to ``fit``).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = [
    "FASHION_MNIST_DIR",
    "DATASETS",
    "LATTICE_STEPS",
    "NUM_CLASSES",
    "cifar10_transform",
    "imagenet_transform",
    "load_cifar10",
    "load_dataset",
    "load_digits_images",
    "load_fashion_mnist",
    "load_imagenet",
    "load_mnist",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the gzipped IDX files."""

_SPLITS = ("train", "test")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}; got {split!r}.")
    return split


def _shape(X: np.ndarray, flat: bool) -> np.ndarray:
    return X.reshape(len(X), -1) if flat else X


def load_digits_images(*, flat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits (1,797 images, 10 classes) scaled to [0, 1].

    Returns ``X`` of shape ``(1797, 1, 8, 8)`` (or ``(1797, 64)`` with ``flat=True``),
    float32, and ``y`` of int64 labels 0–9.  Ships with scikit-learn: no download.

    Parameters
    ----------
    flat : bool
        ``(1797, 64)`` instead of ``(1797, 1, 8, 8)``.
    """
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return _shape(X, flat), y.astype(np.int64)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), gzipped or not, as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable IDX file ({exc}).") from exc
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number).")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, file has "
                         f"{len(data) - offset} bytes of data.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_fashion_mnist(
    root: str | os.PathLike | None = None, *, split: str = "train", flat: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (Xiao et al. 2017) from local IDX files.

    Parameters
    ----------
    root : path or None
        Directory holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.  Default:
        :data:`FASHION_MNIST_DIR`, where Debian's ``dataset-fashion-mnist`` installs them.
    split : {"train", "test"}
        60,000 training or 10,000 test images.
    flat : bool
        Return ``(N, 784)`` instead of ``(N, 1, 28, 28)``.

    Returns
    -------
    X : float32 array in [0, 1];  y : int64 labels 0–9.
    """
    split = _check_split(split)
    root = FASHION_MNIST_DIR if root is None else Path(root)
    image_stem, label_stem = _IDX_FILES[split]
    image_path, label_path = _find(root, image_stem), _find(root, label_stem)
    if image_path is None or label_path is None:
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files ({image_stem}[.gz], {label_stem}[.gz]) are not in "
            f"{root}. Install them with `sudo apt-get update && sudo apt-get install -y "
            "dataset-fashion-mnist` (or `make data` as root), or pass root= a directory "
            "holding the IDX files."
        )
    images, labels = _read_idx(image_path), _read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{image_path} and {label_path} do not hold matching images and labels.")
    X = (images.astype(np.float32) / 255.0)[:, None]
    return _shape(X, flat), labels.astype(np.int64)


def load_mnist(
    root: str | os.PathLike, *, split: str = "train", flat: bool = False, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST through ``torchvision.datasets.MNIST`` from ``root`` (no download by default).

    Returns arrays as :func:`load_fashion_mnist` does.

    Parameters
    ----------
    root : str or Path
        torchvision's MNIST folder.
    split : {"train", "test"}
        Which part.
    flat : bool
        Flat feature vectors.
    download : bool
        Let torchvision download it (off: nothing is downloaded at run time).
    """
    from torchvision.datasets import MNIST

    split = _check_split(split)
    try:
        data = MNIST(str(root), train=split == "train", download=download)
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"MNIST is not under {root} ({exc}). Put torchvision's MNIST/raw files there or "
            "pass download=True on a machine with network access."
        ) from exc
    X = (data.data.numpy().astype(np.float32) / 255.0)[:, None]
    return _shape(X, flat), data.targets.numpy().astype(np.int64)


def cifar10_transform(train: bool):
    """The CIFAR-10 transform of Cohen et al.: random crop 32 (padding 4) and horizontal
    flip for training, none for testing; then ``ToTensor`` (values in [0, 1])."""
    from torchvision import transforms

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train \
        else []
    return transforms.Compose([*steps, transforms.ToTensor()])


def imagenet_transform(train: bool):
    """ImageNet transform of Cohen et al.: random resized crop 224 and flip for training;
    resize 256 and centre crop 224 for testing; then ``ToTensor`` (values in [0, 1])."""
    from torchvision import transforms

    if train:
        steps = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(256), transforms.CenterCrop(224)]
    return transforms.Compose([*steps, transforms.ToTensor()])


def load_cifar10(root: str | os.PathLike, *, split: str = "train", download: bool = False,
                 augment: bool | None = None):
    """CIFAR-10 as a torch ``Dataset`` of ``(3×32×32 tensor in [0, 1], class index)``.

    ``augment`` defaults to ``split == "train"`` (see :func:`cifar10_transform`).

    Parameters
    ----------
    root : str or Path
        torchvision's CIFAR-10 folder.
    split : {"train", "test"}
        Which part.
    download : bool
        Let torchvision download it.
    augment : bool or None
        Random crops and flips (None: for the training split).
    """
    from torchvision.datasets import CIFAR10

    split = _check_split(split)
    augment = split == "train" if augment is None else augment
    try:
        return CIFAR10(str(root), train=split == "train", download=download,
                       transform=cifar10_transform(augment))
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"CIFAR-10 is not under {root} ({exc}). Put torchvision's cifar-10-batches-py "
            "folder there or pass download=True on a machine with network access."
        ) from exc


def load_imagenet(root: str | os.PathLike, *, split: str = "train",
                  augment: bool | None = None):
    """An ImageNet folder (``root/train/<wnid>/*.JPEG``, ``root/val/<wnid>/*.JPEG``) as a
    ``torchvision.datasets.ImageFolder`` with :func:`imagenet_transform`.

    ``split`` is ``"train"`` or ``"test"`` (read from ``root/val``).

    Parameters
    ----------
    root : str or Path
        The folder holding ``train/`` and ``val/``.
    split : {"train", "val"}
        Which part.
    augment : bool or None
        Training augmentation (None: for the training split).
    """
    from torchvision.datasets import ImageFolder

    split = _check_split(split)
    folder = Path(root) / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} does not exist; an ImageNet root holds train/ and val/ folders with "
            "one sub-folder per class."
        )
    augment = split == "train" if augment is None else augment
    return ImageFolder(str(folder), transform=imagenet_transform(augment))


DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "imagenet")
"""Names :func:`load_dataset` accepts."""

NUM_CLASSES = {"digits": 10, "fashion-mnist": 10, "mnist": 10, "cifar10": 10,
               "imagenet": 1000}
"""Classes of each data set of :data:`DATASETS` (labels ``0 … C-1``)."""

LATTICE_STEPS = {"digits": "1/16", "fashion-mnist": "1/255", "mnist": "1/255",
                 "cifar10": "1/255", "imagenet": "1/255"}
"""The spacing of each data set's values as :func:`load_dataset` gives them (digits:
counts 0…16 over 16; the images: 8-bit pixels over 255), the ``noise_step`` of
``noise="discrete-gaussian"``."""


def load_dataset(name: str, *, split: str = "train", root=None, flat: bool = False):
    """Load a data set by name: ``(X, y)`` arrays, or a torch ``Dataset`` for CIFAR-10 and
    ImageNet (with ``y`` = None).

    ``digits`` has no fixed split: ``split="train"`` gives the first 70 % of a
    stratified shuffle (seed 0) and ``"test"`` the remaining 30 %.

    Parameters
    ----------
    name : {"digits", "fashion-mnist", "mnist", "cifar10", "imagenet"}
        The data set.
    split : {"train", "test"}
        Which part.
    root : str, Path or None
        Where its files are (None: the data set's default, where it has one).
    flat : bool
        Images as flat feature vectors ``(N, d)`` instead of ``(N, C, H, W)``.
    """
    _check_split(split)
    if name == "digits":
        from sklearn.model_selection import train_test_split

        X, y = load_digits_images(flat=flat)
        parts = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
        return (parts[0], parts[2]) if split == "train" else (parts[1], parts[3])
    if name == "fashion-mnist":
        return load_fashion_mnist(root, split=split, flat=flat)
    if name in ("mnist", "cifar10", "imagenet") and root is None:
        raise ValueError(f"Data set {name!r} needs root= a local directory (no downloads).")
    if name == "mnist":
        return load_mnist(root, split=split, flat=flat)
    if name == "cifar10":
        return load_cifar10(root, split=split), None
    if name == "imagenet":
        return load_imagenet(root, split=split), None
    raise ValueError(f"Unknown data set {name!r}; choose one of {list(DATASETS)}.")
