"""Networks used as base classifiers.

Inputs are in [0, 1] pixel units; any mean/std normalisation belongs inside the
network (:class:`Normalize` as the first layer) so that σ and certified radii are
measured in input units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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


class LeNet(nn.Module):
    """LeNet of the MNIST randomized-smoothing experiments (SmoothMix, MACER).

    conv 20@5×5 → ReLU → max-pool 2 → conv 50@5×5 → ReLU → max-pool 2 →
    fc 500 → ReLU → fc ``num_classes``, on ``in_channels``×28×28 inputs.
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
