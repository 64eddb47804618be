import gzip
import struct

import numpy as np
import pytest
import torch

from smoothsk import GaussianAugClassifier
from smoothsk.datasets import (
    FASHION_MNIST_DIR,
    cifar10_transform,
    imagenet_transform,
    load_cifar10,
    load_dataset,
    load_digits_images,
    load_fashion_mnist,
    load_imagenet,
    load_mnist,
)
from smoothsk.models import CIFARResNet, ImageNetResNet50, LeNet, Normalize, count_parameters


def _write_idx(path, array, compress=True):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


# ----------------------------------------------------------------------------- data sets
def test_digits_images_and_splits():
    X, y = load_digits_images()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32
    assert X.min() == 0.0 and X.max() == 1.0 and set(y) == set(range(10))
    Xtr, ytr = load_dataset("digits", split="train", flat=True)
    Xte, yte = load_dataset("digits", split="test", flat=True)
    assert Xtr.shape == (1257, 64) and Xte.shape == (540, 64) and len(ytr) + len(yte) == 1797


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (make data)")
def test_fashion_mnist_from_the_debian_files():
    X, y = load_fashion_mnist(split="test")
    assert X.shape == (10_000, 1, 28, 28) and X.dtype == np.float32
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 1000))  # balanced test set
    Xtr, ytr = load_fashion_mnist(split="train", flat=True)
    assert Xtr.shape == (60_000, 784) and np.bincount(ytr).tolist() == [6000] * 10


def test_idx_reader_on_written_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    labels = np.array([3, 1, 4, 1, 5])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, compress=False)
    X, y = load_fashion_mnist(tmp_path, split="test")
    np.testing.assert_allclose(X[:, 0] * 255, images, atol=1e-4)
    np.testing.assert_array_equal(y, labels)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, split="train")
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:4], compress=False)
    with pytest.raises(ValueError, match="matching"):
        load_fashion_mnist(tmp_path, split="test")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09\x01")
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist(tmp_path, split="test")
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(tmp_path, split="valid")


def test_mnist_through_torchvision_with_a_local_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, count in (("train", 7), ("t10k", 4)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)),
                   compress=False)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count),
                   compress=False)
    X, y = load_mnist(tmp_path, split="test")
    assert X.shape == (4, 1, 28, 28) and 0 <= X.min() and X.max() <= 1 and len(y) == 4
    assert load_dataset("mnist", root=tmp_path, flat=True)[0].shape == (7, 784)
    with pytest.raises(FileNotFoundError, match="MNIST"):
        load_mnist(tmp_path / "nowhere")


def test_cifar10_and_imagenet_transforms_keep_pixels_in_unit_range():
    from PIL import Image

    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    torch.manual_seed(0)
    for train in (True, False):
        x = cifar10_transform(train)(image)
        assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
    # the test transform applies no crop or flip: pixels come back unchanged
    np.testing.assert_allclose(cifar10_transform(False)(image).permute(1, 2, 0).numpy() * 255,
                               np.asarray(image), atol=1e-3)
    big = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    for train in (True, False):
        assert imagenet_transform(train)(big).shape == (3, 224, 224)
    with pytest.raises(FileNotFoundError, match="CIFAR-10"):
        load_cifar10("/nonexistent-root")


def test_imagenet_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            Image.new("RGB", (260, 300), color=(10, 200, 30)).save(folder / "a.JPEG")
    data = load_imagenet(tmp_path, split="test")
    x, label = data[1]
    assert x.shape == (3, 224, 224) and label == 1 and data.classes == ["n01", "n02"]
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        load_imagenet(tmp_path / "missing")
    with pytest.raises(ValueError, match="Unknown data set"):
        load_dataset("svhn")


# ----------------------------------------------------------------------------- models
def test_published_parameter_counts_and_shapes():
    # LeNet: 20·25+20 + 50·20·25+50 + 800·500+500 + 500·10+10
    assert count_parameters(LeNet()) == 431_080
    assert LeNet()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert LeNet()(torch.rand(2, 784)).shape == (2, 10)
    # He et al. (2016), Table 6: ResNet-20 0.27 M and ResNet-110 1.7 M parameters
    assert count_parameters(CIFARResNet(20)) == 272_474
    assert count_parameters(CIFARResNet(110)) == 1_730_714
    assert CIFARResNet(20)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # torchvision's ResNet-50: 25.6 M
    assert count_parameters(ImageNetResNet50()) == 25_557_032
    with pytest.raises(ValueError, match="6k"):
        CIFARResNet(21)


def test_normalization_is_the_first_layer():
    net = CIFARResNet(8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert isinstance(net.normalize, Normalize)
    x = torch.full((1, 3, 32, 32), 0.75)
    torch.testing.assert_close(net.normalize(x), torch.ones_like(x))
    with pytest.raises(ValueError, match="std"):
        Normalize([0.5], [0.0])


def test_models_as_estimator_modules(digits):
    rng = np.random.default_rng(3)
    X = rng.uniform(size=(40, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    clf = GaussianAugClassifier(CIFARResNet, module__depth=8, module__num_classes=10,
                                max_epochs=1, batch_size=20, n0=4, n=16, random_state=0)
    clf.fit(X, y)
    assert clf.certify(X[:2]).counts.sum(axis=1).tolist() == [16, 16]
    lenet = GaussianAugClassifier(LeNet, module__num_classes=10, max_epochs=1, n0=4, n=16,
                                  n_predict=8, random_state=0)
    lenet.fit(rng.uniform(size=(30, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 30))
    assert lenet.predict(rng.uniform(size=(3, 1, 28, 28)).astype(np.float32)).shape == (3,)


def test_dncnn_batchnorm_has_the_authors_settings():
    """microsoft/denoised-smoothing ``archs/dncnn.py``:
    ``nn.BatchNorm2d(n_channels, eps=0.0001, momentum=0.95)`` in every middle layer."""
    from smoothsk.models import DnCNN

    norms = [m for m in DnCNN(channels=1, depth=5, width=8).modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 3
    assert all(m.eps == 1e-4 and m.momentum == 0.95 for m in norms)
