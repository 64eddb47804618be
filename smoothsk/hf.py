"""Multi-GPU and multi-node training with Hugging Face Accelerate, through skorch.

skorch's ``AccelerateMixin`` replaces a net's training step with one that computes
``criterion(module(X), y)``; smoothsk's estimators train on their own
``training_loss`` instead.  :class:`SmoothedAccelerateMixin` keeps skorch's
Accelerate integration (device placement, data-loader sharding, gradient
accumulation, mixed precision, DDP) and routes the step through ``training_loss``::

    from accelerate import Accelerator
    from smoothsk import SmoothMixClassifier
    from smoothsk.hf import SmoothedAccelerateMixin

    class AcceleratedSmoothMix(SmoothedAccelerateMixin, SmoothMixClassifier):
        pass

    clf = AcceleratedSmoothMix(accelerator=Accelerator(), device=None, sigma=0.5, ...)

launched with ``accelerate launch train.py`` (see docs/scaling.md).
"""

from __future__ import annotations

import torch
from skorch.dataset import unpack_data
from skorch.hf import AccelerateMixin

__all__ = ["SmoothedAccelerateMixin"]


class SmoothedAccelerateMixin(AccelerateMixin):
    """skorch's ``AccelerateMixin`` for smoothsk estimators (put it first in the bases)."""

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        device = self.accelerator.device
        with self.accelerator.autocast():
            loss = self.training_loss(torch.as_tensor(Xi, device=device),
                                      torch.as_tensor(yi, device=device))
        self.accelerator.backward(loss)
        return {"loss": loss, "y_pred": None}
