"""The training step every smoothsk estimator shares, as a mixin over skorch's.

:class:`TrainingStepMixin` runs one batch of a method's :meth:`training_loss` under the
estimator's precision, refuses a non-finite loss, scales fp16 gradients, schedules the
learning rate by default and restores a :class:`~smoothsk.io.checkpoint.TrainingCheckpoint`.
:class:`~smoothsk.SmoothedClassifier` mixes it in; nothing here knows a method.
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np
import torch
from skorch.callbacks import EpochScoring, LRScheduler
from skorch.dataset import unpack_data
from skorch.utils import to_numpy, to_tensor

from smoothsk.certification.precision import precision_context

__all__ = ["TrainingStepMixin", "clean_accuracy", "seeded_torch"]


@contextlib.contextmanager
def seeded_torch(random_state, device):
    """Seed torch's global generators inside the block and restore them after.

    Training uses the global generator (weight init, DataLoader shuffling, training
    noise); forking keeps a seeded ``fit`` from changing the caller's random stream.

    Parameters
    ----------
    random_state : int, RandomState or None
        None leaves the generators alone.
    device : str or torch.device
        The CUDA device whose generator is forked too (a CPU device forks only the CPU's).
    """
    if random_state is None:
        yield
        return
    if isinstance(random_state, numbers.Integral):
        seed = int(random_state)
    else:
        seed = int(random_state.randint(np.iinfo(np.int32).max))
    devices = []
    if str(device).startswith("cuda") and torch.cuda.is_available():
        devices = [torch.device(device).index or 0]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def clean_accuracy(net, X, y) -> float:
    """Accuracy of the base network's argmax on clean inputs against skorch's encoded targets.

    Used as ``valid_acc`` with skorch's inference cache, so it costs no extra forward pass.

    Parameters
    ----------
    net : SmoothedClassifier
        The estimator being trained.
    X, y
        A validation batch and its encoded targets (class indices).
    """
    logits = net.forward(X, training=False)
    return float((to_numpy(logits).argmax(axis=1) == np.asarray(y)).mean())


class TrainingStepMixin:
    """skorch's training step with the estimator's precision, a finite-loss check, fp16
    loss scaling, the default learning-rate schedule and checkpoint restoring."""

    @property
    def _default_callbacks(self):
        # skorch's valid_acc calls predict, which here is the (slow) smoothed vote in
        # labels; score the base network's clean logits from the cache instead.
        callbacks = dict(super()._default_callbacks)
        callbacks["valid_acc"] = EpochScoring(clean_accuracy, name="valid_acc",
                                              lower_is_better=False)
        if isinstance(self.lr_schedule, str) and self.lr_schedule == "cosine" \
                and not self.has_own_lr_scheduler():
            # Adam's last iterates at a constant rate wander; decaying the rate to 0 over
            # max_epochs ends every run at a settled model (docs/estimators.md).
            callbacks["lr_schedule"] = LRScheduler(
                policy=torch.optim.lr_scheduler.CosineAnnealingLR, T_max=self.max_epochs)
        return list(callbacks.items())

    def has_own_lr_scheduler(self) -> bool:
        """Whether ``callbacks`` holds a learning-rate scheduler (it replaces ours)."""
        if not isinstance(self.callbacks, (list, tuple)):
            return False
        return any(isinstance(cb, LRScheduler) or cb is LRScheduler
                   for cb in (item[1] if isinstance(item, tuple) else item
                              for item in self.callbacks))

    @property
    def epoch_index(self) -> int:
        """Zero-based index of the current training epoch (for warm-up schedules; 0
        before ``fit``)."""
        return 0 if self.history is None else max(len(self.history) - 1, 0)

    @property
    def epoch_index_(self) -> int:
        """The former name of :attr:`epoch_index`, kept for code written against 0.2."""
        return self.epoch_index

    def training_data(self, X, y):
        """What skorch iterates over in training: ``(X, y)`` here; a method whose loss
        needs more per example (CAT-RS's targets) returns a Dataset and None.

        Parameters
        ----------
        X, y
            The validated inputs and encoded labels of ``fit`` / ``partial_fit``.
        """
        return X, y

    def train_step_single(self, batch, **fit_params):
        """skorch's training step: :meth:`training_loss` of ``batch`` at the estimator's
        precision, checked finite, scaled for fp16, back-propagated.

        Parameters
        ----------
        batch : tuple
            ``(X, y)`` from the training iterator.
        **fit_params
            Unused (skorch's signature).
        """
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        with precision_context(self.precision, self.device):
            loss = self.training_loss(to_tensor(Xi, self.device), to_tensor(yi, self.device))
        self.check_training_loss(loss)
        scaler = self.loss_scaler()
        (loss if scaler is None else scaler.scale(loss)).backward()
        return {"loss": loss, "y_pred": None}

    def check_training_loss(self, loss: torch.Tensor) -> None:
        """Raise ``FloatingPointError`` when a step's loss is not finite.

        Every training step calls it (the Accelerate step of :mod:`smoothsk.hf` too), so
        a diverged run stops with what to do instead of being saved as trained.  skorch
        reads the loss as a number after every step anyway, so this costs no extra
        device synchronisation.

        Parameters
        ----------
        loss : torch.Tensor
            The step's scalar loss.
        """
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The training loss is {loss.item()} at epoch {self.epoch_index + 1}: training "
                "diverged. Lower the learning rate (lr) or sigma, or check the inputs."
            )

    def loss_scaler(self):
        """torch.amp's ``GradScaler`` for fp16 training, else None.

        fp16 gradients underflow to zero without loss scaling (torch's mixed-precision
        recipe: scale the loss, unscale the gradients, skip steps whose gradients
        overflow); bf16 has fp32's exponent range and needs none.
        """
        if self.precision != "fp16":
            return None
        if getattr(self, "grad_scaler_", None) is None:
            self.grad_scaler_ = torch.amp.GradScaler(torch.device(self.device).type)
        return self.grad_scaler_

    def _step_optimizer(self, step_fn):
        scaler = self.loss_scaler()
        if scaler is None:
            return super()._step_optimizer(step_fn)
        step_fn()  # the scaled backward pass; GradScaler.step takes no closure
        for name in self._optimizers:
            scaler.step(getattr(self, name + "_"))
        scaler.update()
        return None

    def initialize_optimizer(self, *args, **kwargs):
        self.grad_scaler_ = None  # a new run starts from the default loss scale
        return super().initialize_optimizer(*args, **kwargs)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("grad_scaler_", None)  # device state, rebuilt when training continues
        return state

    def initialize_callbacks(self):
        """skorch's callbacks, with every :class:`~smoothsk.io.checkpoint.TrainingCheckpoint`
        moved last: it records the state the next epoch starts from, so a learning-rate
        scheduler listed after it must have stepped before it writes."""
        from smoothsk.io.checkpoint import TrainingCheckpoint

        super().initialize_callbacks()
        self.callbacks_ = sorted(self.callbacks_,
                                 key=lambda item: isinstance(item[1], TrainingCheckpoint))
        return self

    def restore_checkpoint(self, X, y) -> int:
        """Epochs restored from a :class:`~smoothsk.io.checkpoint.TrainingCheckpoint`
        among the callbacks (0 without one).

        Parameters
        ----------
        X, y
            The training data, whose digest the checkpoint's fingerprint must match.
        """
        from smoothsk.io.checkpoint import TrainingCheckpoint, data_digest

        checkpoints = [cb for _, cb in self.callbacks_ if isinstance(cb, TrainingCheckpoint)]
        if not checkpoints:
            return 0
        self.training_data_digest_ = data_digest(X, y)  # the run's fingerprint reads it
        return checkpoints[0].restore(self)

    @contextlib.contextmanager
    def training_context(self):
        """The block a ``fit`` or ``partial_fit`` trains in.

        Callbacks run inside see skorch's encoded targets (class indices); the scorers
        read :attr:`fitting` to map them back to labels.  A finished block records the σ
        the network was trained at (``trained_sigma_``): certifying at another is refused.
        """
        self._fitting = True
        try:
            yield
            self.trained_sigma_ = float(self.noise_level)
        finally:
            del self._fitting

    @property
    def fitting(self) -> bool:
        """Whether the estimator is inside ``fit`` or ``partial_fit`` right now."""
        return getattr(self, "_fitting", False)
