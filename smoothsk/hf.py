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

Mixed precision is the accelerator's (``Accelerator(mixed_precision="fp16")`` scales the
loss in ``accelerator.backward``); the estimator's own ``precision`` must stay "fp32",
since its fp16 loss scaler would unscale gradients the accelerator never scaled.
"""

from __future__ import annotations

import torch
from skorch.dataset import unpack_data
from skorch.hf import AccelerateMixin

from smoothsk.certification.precision import resolve_precision

__all__ = ["SmoothedAccelerateMixin"]


class SmoothedAccelerateMixin(AccelerateMixin):
    """skorch's ``AccelerateMixin`` for smoothsk estimators (put it first in the bases)."""

    def initialize(self):
        if resolve_precision(self.precision, self.device) != "fp32":
            raise ValueError(
                f"precision={self.precision!r} cannot be combined with Accelerate: set "
                "precision='fp32' and pass Accelerator(mixed_precision='fp16' or 'bf16'), "
                "which autocasts and scales the loss itself.")
        return super().initialize()

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        device = self.accelerator.device
        with self.accelerator.autocast():
            loss = self.training_loss(torch.as_tensor(Xi, device=device),
                                      torch.as_tensor(yi, device=device))
        self.check_training_loss(loss)  # a diverged run stops, as without Accelerate
        self.accelerator.backward(loss)
        return {"loss": loss, "y_pred": None}
