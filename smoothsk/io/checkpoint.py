"""Resumable training: an atomic checkpoint after every epoch, and exact continuation.

Add :class:`TrainingCheckpoint` to an estimator's callbacks and ``fit`` writes, after
every epoch, one file with everything the next epoch depends on: the network's and the
optimizer's state, the history (learning-rate schedules and warm-ups are functions of
it), torch's random generators and a fingerprint of the run's settings.  Killed at any
point (Ctrl-C, SIGKILL, power loss), the file holds the last complete epoch; calling
``fit`` again with the same settings and data restores it and trains only the missing
epochs, giving *exactly* the weights of an uninterrupted seeded run.  A checkpoint of
other settings is refused, never silently resumed.

skorch's ``Checkpoint`` / ``LoadInitState`` keep parameters, optimizer and history but
not the random generators, so a resumed run would draw other noise and shuffles; this
callback keeps those too.  The file is a torch archive of tensors and JSON strings,
read with ``weights_only=True`` like smoothsk's model files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from skorch.callbacks import Callback

__all__ = ["CheckpointMismatchError", "TrainingCheckpoint", "completed_epochs", "data_digest",
           "run_fingerprint"]

_FORMAT = "smoothsk-training-checkpoint"


class CheckpointMismatchError(ValueError):
    """A checkpoint exists but belongs to a training run with other settings."""


def completed_epochs(history) -> int:
    """Epochs that ran to their end (skorch adds an epoch's row when it *starts*; a row
    without ``dur`` is an epoch cut short, by Ctrl-C for instance).

    Parameters
    ----------
    history : skorch History
        A net's ``history``.
    """
    return sum(1 for row in history if "dur" in row)


def data_digest(X, y=None) -> str:
    """SHA-256 of training data: every byte of arrays and tensors (shape and dtype
    included); for a torch Dataset its type, length and three of its items.

    Parameters
    ----------
    X : array, tensor or Dataset
        The inputs given to ``fit``.
    y : array or None
        The labels.
    """
    digest = hashlib.sha256()
    for part in (X, y):
        if part is None:
            digest.update(b"none")
            continue
        if isinstance(part, torch.utils.data.Dataset) and not isinstance(part, torch.Tensor):
            digest.update(f"{type(part).__qualname__}:{len(part)}".encode())
            for i in sorted({0, len(part) // 2, len(part) - 1} if len(part) else ()):
                item = part[i]
                for field in item if isinstance(item, (tuple, list)) else (item,):
                    digest.update(np.ascontiguousarray(np.asarray(field)).tobytes())
            continue
        array = part.detach().cpu().numpy() if isinstance(part, torch.Tensor) else \
            np.asarray(part)
        if array.dtype == object:
            array = array.astype(str)
        digest.update(f"{array.shape}:{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def run_fingerprint(estimator) -> str:
    """SHA-256 of what determines a training run: the estimator's class and parameters,
    the learning-rate schedulers among its callbacks (policy and arguments), and the
    training data (:func:`data_digest`, which ``fit`` stores as ``training_data_digest_``).

    Parameters
    ----------
    estimator : SmoothedClassifier
        Initialized (its ``callbacks_`` built) and inside ``fit``.
    """
    from skorch.callbacks import LRScheduler

    skip = {"callbacks", "verbose", "device"}
    params = {name: repr(value) for name, value in estimator.get_params(deep=False).items()
              if name not in skip and not name.startswith("callbacks__")}
    schedules = [
        {"name": name, "arguments": repr(sorted(  # its settings, not its running state
            (key, value) for key, value in vars(callback).items() if not key.endswith("_")))}
        for name, callback in getattr(estimator, "callbacks_", [])
        if isinstance(callback, LRScheduler)
    ]
    text = json.dumps({"estimator": type(estimator).__name__, "params": params,
                       "schedules": schedules,
                       "data": getattr(estimator, "training_data_digest_", None)},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class TrainingCheckpoint(Callback):
    """Write the training state atomically after every epoch; resume from it in ``fit``.

    Parameters
    ----------
    path : path
        The checkpoint file.  Remove it to start the run over.
    delete_when_done : bool, default=False
        Remove the file when training has finished (the CLI does, after saving the
        model).

    Notes
    -----
    Resuming needs the same estimator parameters, data size and ``random_state`` (an
    int); the fingerprint checks the first two.  Without a fixed ``random_state`` a
    resumed run continues correctly but cannot equal an uninterrupted one.
    """

    def __init__(self, path, *, delete_when_done: bool = False):
        self.path = path
        self.delete_when_done = delete_when_done

    def on_train_begin(self, net, X=None, **kwargs):
        self.fingerprint_ = run_fingerprint(net)

    def on_epoch_end(self, net, **kwargs):
        from smoothsk.io.files import atomic_write

        scaler = getattr(net, "grad_scaler_", None)
        state = {
            "format": _FORMAT,
            "fingerprint": self.fingerprint_,
            "module": {k: v.detach().cpu() for k, v in net.module_.state_dict().items()},
            "optimizer": net.optimizer_.state_dict(),
            "history": json.dumps(net.history.to_list(), default=_jsonable),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # fp16's loss scale: a resumed run must scale (and skip steps) as this one would
            "grad_scaler": json.dumps(scaler.state_dict() if scaler is not None else {}),
        }
        atomic_write(Path(self.path), lambda stream: torch.save(state, stream))

    def on_epoch_begin(self, net, **kwargs):
        lrs = getattr(self, "resumed_lrs_", None)
        if lrs is None:
            return
        self.resumed_lrs_ = None
        # torch's schedulers take one step when built, and skorch builds them again on a
        # resumed fit (last_epoch from the history): a milestone at the resumed epoch
        # would apply twice.  Put back the learning rates the checkpoint trained with.
        for group, lr in zip(net.optimizer_.param_groups, lrs):
            group["lr"] = lr
        for _, callback in net.callbacks_:
            scheduler = getattr(callback, "lr_scheduler_", None)
            if scheduler is not None and hasattr(scheduler, "_last_lr"):
                scheduler._last_lr = list(lrs)

    def on_train_end(self, net, **kwargs):
        if self.delete_when_done and completed_epochs(net.history) >= net.max_epochs:
            Path(self.path).unlink(missing_ok=True)

    def restore(self, net) -> int:
        """Load the saved state into an initialized ``net``; return the epochs it holds.

        0 when there is no checkpoint.  Raises :class:`CheckpointMismatchError` when the
        checkpoint belongs to other settings.
        """
        from skorch.history import History

        path = Path(self.path)
        if not path.exists():
            return 0
        from smoothsk.io.files import load_data_only

        try:
            state = load_data_only(path)
        except (ValueError, OSError) as exc:
            raise CheckpointMismatchError(
                f"{path} is not a readable training checkpoint ({exc}); remove it to start "
                "over.") from exc
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise CheckpointMismatchError(f"{path} is not a smoothsk training checkpoint.")
        if state["fingerprint"] != run_fingerprint(net):
            raise CheckpointMismatchError(
                f"{path} belongs to a training run with other settings, learning-rate "
                "schedule or data; remove it to start over, or choose another checkpoint "
                "path.")
        device = torch.device(net.device)
        net.module_.load_state_dict(state["module"])
        net.optimizer_.load_state_dict(state["optimizer"])
        self.resumed_lrs_ = [group["lr"] for group in net.optimizer_.param_groups]
        net.history = History(json.loads(state["history"]))
        scaler_state, scaler = json.loads(state.get("grad_scaler", "{}")), net.loss_scaler()
        if scaler_state and scaler is not None:
            scaler.load_state_dict(scaler_state)
        torch.set_rng_state(state["cpu_rng"])
        if state["cuda_rng"] and device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return len(net.history)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"history value {value!r} is not JSON serialisable")
