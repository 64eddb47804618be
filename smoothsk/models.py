"""Networks used as base classifiers.

Inputs are in [0, 1] pixel units; any mean/std normalisation belongs inside the
network (:class:`Normalize` as the first layer) so that σ and certified radii are
measured in input units.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from smoothsk.certification.precision import resolve_precision

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFARResNet",
    "DnCNN",
    "MLPDenoiser",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageNetResNet50",
    "LeNet",
    "MAX_AUTOTUNE_OPTIONS",
    "MLP",
    "NETWORK_NAMES",
    "Normalize",
    "compile_fitted",
    "count_parameters",
    "default_network",
    "default_network_name",
    "network_for_dataset",
    "uses_channels_last",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


NETWORK_NAMES = ("auto", "mlp", "lenet", "resnet20", "resnet110", "resnet50")
"""The networks :func:`network_for_dataset` builds (``smoothsk train --model``)."""

# image side of each data set of smoothsk.datasets (None: flat vectors)
_IMAGE_SIDES = {"digits": None, "fashion-mnist": 28, "mnist": 28, "cifar10": 32,
                "imagenet": 224}
_DEFAULT_NETWORKS = {"digits": "mlp", "fashion-mnist": "lenet", "mnist": "lenet",
                     "cifar10": "resnet110", "imagenet": "resnet50"}


def network_for_dataset(dataset: str, network: str = "auto") -> tuple[str, type | None, dict]:
    """The network of a :data:`smoothsk.datasets.DATASETS` data set, as estimator parameters.

    Parameters
    ----------
    dataset : str
        A name of :data:`smoothsk.datasets.DATASETS`.
    network : str, default="auto"
        One of :data:`NETWORK_NAMES`; ``"auto"`` is the data set's usual network: MLP for
        digits, LeNet for (Fashion-)MNIST, ResNet-110 for CIFAR-10, ResNet-50 for ImageNet.

    Returns
    -------
    name : str
        The network chosen (``"auto"`` resolved).
    module : type or None
        The class for the estimator's ``module`` (None: its default MLP, sized from
        the data).
    params : dict
        Its ``module__*`` arguments (classes, image size, depth); empty for the MLP.

    Raises
    ------
    ValueError
        For a network that does not fit the data set's inputs, saying which one does.
    """
    from smoothsk.datasets import NUM_CLASSES

    if dataset not in _IMAGE_SIDES:
        raise ValueError(f"dataset must be one of {sorted(_IMAGE_SIDES)}; got {dataset!r}.")
    if network not in NETWORK_NAMES:
        raise ValueError(f"network must be one of {NETWORK_NAMES}; got {network!r}.")
    name = _DEFAULT_NETWORKS[dataset] if network == "auto" else network
    num_classes, side = NUM_CLASSES[dataset], _IMAGE_SIDES[dataset]
    if name == "mlp":
        return name, None, {}
    if name == "lenet":
        if side is None:
            raise ValueError("--model lenet needs 28×28 images; use --model mlp for digits.")
        return name, LeNet, {"module__num_classes": num_classes, "module__image_size": side}
    if name in ("resnet20", "resnet110"):
        if dataset != "cifar10":
            raise ValueError(f"--model {name} is the CIFAR-10 network; use --dataset cifar10.")
        return name, CIFARResNet, {"module__depth": int(name[6:]),
                                   "module__num_classes": num_classes}
    if dataset != "imagenet":
        raise ValueError("--model resnet50 is the ImageNet network; use --dataset imagenet.")
    return name, ImageNetResNet50, {"module__num_classes": num_classes}


MAX_AUTOTUNE_OPTIONS = {"max_autotune": True, "freezing": True}
"""Inductor options of :func:`compile_fitted`'s ``"max-autotune"``: kernels chosen by
timing them, and the weights frozen into the compiled graph (batch norm folded) --
sound for a network that is only evaluated, wrong for training."""


def compile_fitted(estimator, mode: str = "default") -> None:
    """Compile a fitted estimator's network with ``torch.compile``, its weights kept.

    skorch re-initializes the network when ``compile`` or its options change, so the
    trained weights are put back into the fresh module that the compiled wrapper holds.

    Parameters
    ----------
    estimator : SmoothedClassifier
        Fitted; changed in place (``compile=True``).
    mode : {"default", "max-autotune"}, default="default"
        ``"max-autotune"`` adds :data:`MAX_AUTOTUNE_OPTIONS` (its speed is in
        docs/benchmarks.md); for certification, never for further training.
    """
    if mode not in ("default", "max-autotune"):
        raise ValueError(f"mode must be 'default' or 'max-autotune'; got {mode!r}.")
    network = getattr(estimator.module_, "_orig_mod", estimator.module_)
    state = network.state_dict()
    params = {"compile": True}
    if mode == "max-autotune":
        params["compile__options"] = dict(MAX_AUTOTUNE_OPTIONS)
    estimator.set_params(**params)
    getattr(estimator.module_, "_orig_mod", estimator.module_).load_state_dict(state)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters.

    Parameters
    ----------
    module : torch.nn.Module
        The network.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def uses_channels_last(module: nn.Module, channels_last, device="cpu",
                       precision: str = "fp32") -> bool:
    """Whether an estimator keeps ``module`` in channels-last memory format.

    ``channels_last`` True or False is obeyed.  ``"auto"`` says yes for a network with
    4-d weights (2-d convolutions) where channels-last was measured faster
    (docs/benchmarks.md, "Channels-last by default"): on a CPU at any precision (oneDNN's
    convolutions), and on a GPU at reduced precision (the tensor cores' layout); not for
    fp32 on a GPU, where it was not measured faster.  A layout never changes a value, only the order
    of sums inside a convolution.

    Parameters
    ----------
    module : torch.nn.Module
        The network.
    channels_last : bool or "auto"
        The estimator's setting.
    device : str or torch.device or None
        Where the network runs (None: where its parameters are).
    precision : {"fp32", "bf16", "fp16", "auto"}
        The estimator's precision.
    """
    if channels_last != "auto":
        return bool(channels_last)
    if device is None:  # skorch's "leave the network where it is"
        device = next((p.device for p in module.parameters()), "cpu")
    convolutional = any(p.dim() == 4 for p in module.parameters())
    reduced = resolve_precision(precision, device) != "fp32"
    return convolutional and (torch.device(device).type == "cpu" or reduced)


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel, as a network's first layer.

    Parameters
    ----------
    mean, std : sequence of float
        One value per channel (dimension 1 of the input).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32)
        std_t = torch.as_tensor(std, dtype=torch.float32)
        if mean_t.shape != std_t.shape or mean_t.ndim != 1:
            raise ValueError("mean and std must be 1-D sequences of the same length.")
        if torch.any(std_t <= 0):
            raise ValueError(f"std must be > 0 for every channel; got {list(std)}.")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


class MLP(nn.Module):
    """Flatten, then ``len(hidden_units)`` ReLU layers, then a linear layer of logits.

    The default network of every smoothsk estimator when ``module=None``:
    ``in_features`` and ``num_classes`` are then taken from the training data.

    Parameters
    ----------
    in_features, num_classes : int
        Entries per input after flattening (``X.shape[1]``), and logits per input.
    hidden_units : sequence of int, default=(256, 256)
        Width of each hidden ReLU layer, in order; ``()`` is a linear model.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_units: Sequence[int] = (256, 256),
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for units in hidden_units:
            layers += [nn.Linear(width, units), nn.ReLU()]
            width = units
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DnCNN(nn.Module):
    """DnCNN denoiser (Zhang et al. 2017) as in denoised smoothing's ``archs/dncnn.py``.

    conv(width) → ReLU → ``depth − 2`` × [conv(width, no bias) → BatchNorm → ReLU] →
    conv(channels, no bias), predicting the noise: ``D(x) = x − net(x)``.  Orthogonal
    initialisation and a zero last layer (Salman et al.'s code), so an untrained
    denoiser is the identity.  The published denoisers use ``depth=17, width=64``; the
    defaults here (5, 32) train on a CPU.

    Parameters
    ----------
    channels, depth, width, kernel_size : int, default=1, 5, 32, 3
        Image channels in and out; convolutions in all (at least 2); channels of the
        hidden ones; every kernel's side (padded to keep the image size).
    """

    def __init__(self, channels: int = 1, depth: int = 5, width: int = 32,
                 kernel_size: int = 3):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2; got {depth!r}.")
        padding = kernel_size // 2
        layers: list[nn.Module] = [nn.Conv2d(channels, width, kernel_size, padding=padding),
                                   nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, kernel_size, padding=padding, bias=False),
                       nn.BatchNorm2d(width, eps=1e-4, momentum=0.95), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, kernel_size, padding=padding, bias=False))
        self.net = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.orthogonal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(layers[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.net(x)


class MLPDenoiser(nn.Module):
    """Residual MLP denoiser for flat inputs: ``D(x) = x − mlp(x)``, zero last layer
    (the identity when untrained), the flat-input counterpart of :class:`DnCNN`.

    Parameters
    ----------
    in_features : int
        Entries per input (the output has as many).
    hidden_units : sequence of int, default=(256, 256)
        Width of each hidden ReLU layer of the residual :class:`MLP`.
    """

    def __init__(self, in_features: int, hidden_units: Sequence[int] = (256, 256)):
        super().__init__()
        self.in_features = in_features
        self.mlp = MLP(in_features, in_features, hidden_units)
        last = self.mlp.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mlp(x).view_as(x)


class LeNet(nn.Module):
    """LeNet of the MNIST randomized-smoothing experiments (SmoothMix, MACER).

    conv 20@5×5 → ReLU → max-pool 2 → conv 50@5×5 → ReLU → max-pool 2 →
    fc 500 → ReLU → fc ``num_classes``, on ``in_channels`` × 28 × 28 inputs.

    Parameters
    ----------
    num_classes, in_channels, image_size : int, default=10, 1, 28
        Logits per input, image channels, and the square images' side (flat inputs of
        ``image_size²`` entries are reshaped).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(50 * side * side, 500), nn.ReLU(), nn.Linear(500, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:  # flat inputs of a square single-channel image
            side = int(round((x.shape[1]) ** 0.5))
            x = x.view(len(x), 1, side, side)
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CIFARResNet(nn.Module):
    """The CIFAR-10 ResNets of the randomized-smoothing papers (He et al. 2016, §4.2).

    Depth ``6k + 2``: a 3×3 conv with 16 channels, three stages of k basic blocks with
    16, 32 and 64 channels (stride 2 between stages, 1×1 projection shortcuts),
    global average pooling and a linear layer.  ResNet-20 (k = 3, 0.27 M parameters)
    and ResNet-110 (k = 18, 1.7 M parameters) are the ones Cohen et al., SmoothMix and
    CRT use.  The first layer normalises with ``mean`` / ``std`` (CIFAR-10's by
    default), so inputs stay in [0, 1].

    Parameters
    ----------
    depth, num_classes, in_channels : int, default=110, 10, 3
        ``6k + 2`` layers (20, 56, 110, ...), logits per input, image channels.
    mean, std : sequence of float or None, default=CIFAR-10's
        Per-channel normalisation of the first layer; ``mean=None`` for none.
    """

    def __init__(self, depth: int = 110, num_classes: int = 10, in_channels: int = 3,
                 mean: Sequence[float] | None = CIFAR10_MEAN,
                 std: Sequence[float] | None = CIFAR10_STD):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6k + 2 with k >= 1 (20, 56, 110, ...); got {depth}.")
        blocks = (depth - 2) // 6
        self.normalize = nn.Identity() if mean is None else Normalize(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        layers, in_planes = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(blocks):
                layers.append(_BasicBlock(in_planes, planes, 2 if stage and i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(self.normalize(x))))


class ImageNetResNet50(nn.Module):
    """torchvision's ResNet-50 behind a :class:`Normalize` layer (ImageNet mean/std).

    ``weights`` is passed to ``torchvision.models.resnet50`` (None: random
    initialisation; nothing is downloaded unless a weights enum is given).

    Parameters
    ----------
    num_classes : int, default=1000
        Logits per input.
    weights : torchvision weights enum or None, default=None
        torchvision's pretrained weights (downloaded by torchvision unless cached), or
        None for a random initialisation.
    mean, std : sequence of float, default=ImageNet's
        Per-channel normalisation in front of the network.
    """

    def __init__(self, num_classes: int = 1000, weights=None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        from torchvision.models import resnet50

        self.normalize = Normalize(mean, std)
        self.net = resnet50(weights=weights, num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def default_network_name(input_shape, module_params: dict) -> str:
    """The network of ``module=None`` for inputs of ``input_shape``.

    ``"LeNet"`` for square images of side ≥ 16 (``(channels, side, side)``), else
    ``"MLP"`` — also when ``module_params`` holds ``hidden_units`` (the MLP's widths).

    Parameters
    ----------
    input_shape : tuple of int
        One input's shape.
    module_params : dict
        The estimator's ``module__*`` arguments.
    """
    square = len(input_shape) == 3 and input_shape[1] == input_shape[2] >= 16
    return "LeNet" if square and "hidden_units" not in module_params else "MLP"


def default_network(name: str, input_shape, n_classes: int, module_params: dict) -> nn.Module:
    """The default network ``name`` (:func:`default_network_name`) sized for
    ``input_shape`` and ``n_classes``; ``module_params`` (``module__*``) override.

    Parameters
    ----------
    name : {"LeNet", "MLP"}
        The network.
    input_shape : tuple of int
        One input's shape.
    n_classes : int
        The number of outputs.
    module_params : dict
        ``module__*`` arguments, which override the sizes chosen here.
    """
    if name == "LeNet":
        channels, side = input_shape[0], input_shape[1]
        return LeNet(**{"num_classes": n_classes, "in_channels": channels,
                        "image_size": side, **module_params})
    return MLP(**{"in_features": int(np.prod(input_shape)), "num_classes": n_classes,
                  **module_params})
