"""Resumable training: killed at random points, the rerun ends with the exact weights."""

import json
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from smoothsk import GaussianAugClassifier
from smoothsk.io.checkpoint import CheckpointMismatchError, TrainingCheckpoint, completed_epochs

# Trains SmoothMix (warm-up, lr steps, attack noise: everything that depends on the epoch
# and the random generators) with a checkpoint, then saves the final weights.
SCRIPT = """
import sys, numpy as np, torch
from smoothsk import SmoothMixClassifier
from smoothsk.io.checkpoint import TrainingCheckpoint
from smoothsk.recipes import recipe, recipe_params
torch.set_num_threads(1)
X = np.random.default_rng(0).random((3000, 32)).astype(np.float32)
y = (X[:, 0] + X[:, 1] > 1).astype(int) + (X[:, 2] > 0.5)
params = recipe_params(recipe("smoothmix", "mnist", 0.5), epochs=6)
params["callbacks"] += [("checkpoint", TrainingCheckpoint(sys.argv[1]))]
params.update(num_steps=2, batch_size=50, random_state=0, module__hidden_units=(64,))
clf = SmoothMixClassifier(**params).fit(X, y)
assert len(clf.history) == 6
torch.save(clf.module_.state_dict(), sys.argv[2])
"""


def _command(tmp_path, name):
    return [sys.executable, "-c", SCRIPT, str(tmp_path / f"{name}.ckpt"),
            str(tmp_path / f"{name}.pt")]


def _run_and_kill_after_next_epoch(tmp_path, name, rng) -> bool:
    """Start the script, SIGKILL it at a random moment after its next checkpoint.

    Returns True when it finished before the kill.  Waiting for a new checkpoint first
    makes every run progress, so the loop ends; the random delay puts the kill anywhere
    in the following epoch (or in the checkpoint write itself).
    """
    checkpoint = tmp_path / f"{name}.ckpt"
    seen = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
    process = subprocess.Popen(_command(tmp_path, name), stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:
        now = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        if now != seen:
            time.sleep(rng.uniform(0.0, 0.3))
            break
        time.sleep(0.005)
    if process.poll() is None:
        process.kill()
    _, err = process.communicate()
    if process.returncode == 0:
        return True
    assert process.returncode == -9, err.decode()
    return False


@pytest.mark.subprocess
def test_training_killed_at_random_points_resumes_to_the_exact_weights(tmp_path):
    subprocess.run(_command(tmp_path, "straight"), check=True)
    rng = random.Random(0)
    kills = 0
    while not _run_and_kill_after_next_epoch(tmp_path, "interrupted", rng):
        kills += 1
        assert kills < 20, "the interrupted run never finished"
    assert kills >= 2  # it really was interrupted several times
    straight = torch.load(tmp_path / "straight.pt")
    resumed = torch.load(tmp_path / "interrupted.pt")
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0)


class _StopAfter(Callback):
    """Ctrl-C as the next epoch begins: after every callback of epoch ``epochs`` ran,
    the checkpoint included (it is written last)."""

    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == self.epochs + 1:  # the new epoch's row is there already
            raise KeyboardInterrupt  # skorch ends fit quietly, as on Ctrl-C


def _straight_and_resumed(make, X, y, path, stop):
    """An uninterrupted fit, and one stopped after ``stop`` epochs then resumed from ``path``."""
    straight = make().fit(X, y)
    first = make(("checkpoint", TrainingCheckpoint(path)), ("stop", _StopAfter(stop))).fit(X, y)
    assert completed_epochs(first.history) == stop
    # the resumed run really starts from the checkpoint of epoch `stop`
    saved = torch.load(path, weights_only=True)
    assert len(json.loads(saved["history"])) == stop
    resumed = make(("checkpoint", TrainingCheckpoint(path)), ("stop", _StopAfter(99))).fit(X, y)
    return straight, resumed


def _assert_same_weights(resumed, straight):
    for name, value in straight.module_.state_dict().items():
        torch.testing.assert_close(resumed.module_.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.parametrize("stop", [1, 2, 3, 4])  # 2 and 4 are learning-rate milestones
def test_resume_after_any_epoch_equals_the_uninterrupted_run(tmp_path, stop):
    from smoothsk import SmoothMixClassifier
    from smoothsk.recipes import recipe, recipe_params

    rng = np.random.default_rng(0)
    X = rng.random((200, 16)).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(int)

    def make(*callbacks):
        params = recipe_params(recipe("smoothmix", "mnist", 0.5), epochs=6)
        params["callbacks"] += list(callbacks)
        params.update(num_steps=2, batch_size=50, random_state=0, module__hidden_units=(16,))
        return SmoothMixClassifier(**params)

    straight, resumed = _straight_and_resumed(make, X, y, tmp_path / "run.ckpt", stop)
    assert resumed.history[:, "event_lr"] == straight.history[:, "event_lr"]
    assert resumed.history[:, "train_loss"] == straight.history[:, "train_loss"]
    _assert_same_weights(resumed, straight)


def test_checkpoint_of_other_settings_is_refused(tmp_path, digits):
    X, y = digits
    path = tmp_path / "run.ckpt"
    params = dict(max_epochs=2, batch_size=64, random_state=0,
                  callbacks=[("checkpoint", TrainingCheckpoint(path))])
    GaussianAugClassifier(sigma=0.25, **params).fit(X[:200], y[:200])
    assert path.exists()
    with pytest.raises(CheckpointMismatchError, match="other settings"):
        GaussianAugClassifier(sigma=0.5, **params).fit(X[:200], y[:200])
    # a finished checkpoint of the same run restores instead of training again
    clf = GaussianAugClassifier(sigma=0.25, **params).fit(X[:200], y[:200])
    assert len(clf.history) == 2
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointMismatchError, match="not a readable training checkpoint"):
        GaussianAugClassifier(sigma=0.25, **params).fit(X[:200], y[:200])


def test_delete_when_done(tmp_path, digits):
    X, y = digits
    path = tmp_path / "run.ckpt"
    GaussianAugClassifier(max_epochs=1, random_state=0, callbacks=[
        ("checkpoint", TrainingCheckpoint(path, delete_when_done=True))]).fit(X[:100], y[:100])
    assert not path.exists()


def test_fp16_training_scales_the_loss_and_resumes_with_its_scale(tmp_path, monkeypatch):
    # fp16 is refused on a CPU (it is a CUDA format); the loss-scaling logic does not
    # depend on the device, and torch's CPU autocast and GradScaler take fp16, so it is
    # exercised here with the device check lifted.  tests/test_gpu.py trains fp16 on CUDA.
    from smoothsk import fit_data
    from smoothsk.certification import sampling

    for module in (fit_data, sampling):  # where training and sampling look it up
        monkeypatch.setattr(module, "check_precision", lambda precision, device=None: precision)
    rng = np.random.default_rng(0)
    X = rng.random((200, 16)).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(int)

    def make(*callbacks):
        return GaussianAugClassifier(sigma=0.5, precision="fp16", max_epochs=4, batch_size=20,
                                     random_state=0, module__hidden_units=(16,),
                                     callbacks=list(callbacks))

    straight, resumed = _straight_and_resumed(make, X, y, tmp_path / "run.ckpt", 2)
    # 4 epochs of 10 steps, none overflowing: the scaler counted 40 good steps towards
    # its next growth; a resumed run that rebuilt it would have counted 20.
    assert straight.grad_scaler_.state_dict()["_growth_tracker"] == 40
    assert resumed.grad_scaler_.state_dict() == straight.grad_scaler_.state_dict()
    _assert_same_weights(resumed, straight)


def test_resume_under_the_default_cosine_schedule_equals_the_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((200, 16)).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(int)

    def make(*callbacks):
        return GaussianAugClassifier(sigma=0.5, max_epochs=5, batch_size=50, random_state=0,
                                     module__hidden_units=(16,), callbacks=list(callbacks))

    straight, resumed = _straight_and_resumed(make, X, y, tmp_path / "run.ckpt", 2)
    assert resumed.history[:, "event_lr"] == straight.history[:, "event_lr"]
    _assert_same_weights(resumed, straight)


def _step_schedule(step_size=2, gamma=0.1):
    from skorch.callbacks import LRScheduler

    return ("lr_scheduler", LRScheduler(policy="StepLR", step_size=step_size, gamma=gamma))


def _multistep_schedule():
    from skorch.callbacks import LRScheduler

    return ("lr_scheduler", LRScheduler(policy="MultiStepLR", milestones=[2, 3], gamma=0.5))


@pytest.mark.parametrize("schedule", ["step-after", "multistep-after", "step-before"])
@pytest.mark.parametrize("stop", [1, 2, 3, 4])
def test_resume_is_exact_at_every_epoch_whatever_the_callbacks_order(tmp_path, stop, schedule):
    """The command line lists its --lr-step scheduler *after* the checkpoint: the
    checkpoint must still record the rate the next epoch uses (milestones at 2, 3, 4)."""
    rng = np.random.default_rng(0)
    X = rng.random((200, 16)).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(int)
    lr_callback = {"step-after": _step_schedule, "multistep-after": _multistep_schedule,
                   "step-before": _step_schedule}[schedule]

    def make(*callbacks):
        callbacks = list(callbacks)
        if schedule == "step-before":
            callbacks = [lr_callback(), *callbacks]
        else:
            callbacks = [*callbacks, lr_callback()]
        return GaussianAugClassifier(sigma=0.5, max_epochs=5, batch_size=50, random_state=0,
                                     optimizer=torch.optim.SGD, lr=0.1,
                                     module__hidden_units=(16,), callbacks=callbacks)

    straight, resumed = _straight_and_resumed(make, X, y, tmp_path / "run.ckpt", stop)
    assert resumed.history[:, "event_lr"] == straight.history[:, "event_lr"]
    assert resumed.optimizer_.param_groups[0]["lr"] == straight.optimizer_.param_groups[0]["lr"]
    _assert_same_weights(resumed, straight)


def test_a_checkpoint_of_another_schedule_or_other_data_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((120, 8)).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(int)
    path = tmp_path / "run.ckpt"

    def make(*extra):
        return GaussianAugClassifier(sigma=0.5, max_epochs=3, batch_size=40, random_state=0,
                                     module__hidden_units=(8,),
                                     callbacks=[("checkpoint", TrainingCheckpoint(path)),
                                                ("stop", _StopAfter(1)), *extra])

    make(_step_schedule(2)).fit(X, y)
    for other in ([_step_schedule(1)], [_step_schedule(2, gamma=0.9)], []):
        with pytest.raises(CheckpointMismatchError, match="learning-rate schedule or data"):
            make(*other).fit(X, y)
    with pytest.raises(CheckpointMismatchError):
        make(_step_schedule(2)).fit(X[::-1].copy(), y)  # same shape, other data
    assert completed_epochs(make(_step_schedule(2)).fit(X, y).history) == 1  # it resumes


def test_ctrl_c_in_the_final_epoch_saves_nothing_and_keeps_the_checkpoint(tmp_path, monkeypatch,
                                                                         capsys):
    from smoothsk.base import SmoothedClassifier
    from smoothsk.cli import main

    step = SmoothedClassifier.train_step

    def interrupted(self, batch, **fit_params):
        if len(self.history) == self.max_epochs and self.history[-1, "batches"]:
            raise KeyboardInterrupt  # the second batch of the last epoch
        return step(self, batch, **fit_params)

    monkeypatch.setattr(SmoothedClassifier, "train_step", interrupted)
    out = tmp_path / "m.smoothsk"
    threads = torch.get_num_threads()
    try:
        code = main(["train", "--dataset", "digits", "--method", "gaussian", "--epochs", "2",
                     "--max-train", "300", "--quiet", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert not out.exists()
    assert (tmp_path / "m.smoothsk.ckpt").exists()  # the first epoch, complete
