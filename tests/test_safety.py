"""Guards: non-finite networks and losses, overflowing σ, exclusive runs, strict scorers,
report validation."""

import multiprocessing
import time

import numpy as np
import pytest
import torch
from conftest import SHORT_FIT

from smoothsk import GaussianAugClassifier, certified_accuracy_scorer, certify
from smoothsk.io.report import read_certification_tsv
from smoothsk.io.runs import RunLockedError, certify_to_tsv, exclusive_run

FAST = SHORT_FIT


class _NaNNet(torch.nn.Module):
    def forward(self, x):
        return torch.full((len(x), 3), float("nan"))


def test_non_finite_logits_are_never_certified():
    X = np.zeros((4, 5), dtype=np.float32)
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        certify(_NaNNet(), X, 0.5, n0=10, n=100)


def test_overflowing_sigma_is_rejected():
    with pytest.raises(ValueError, match="float32 noise overflows"):
        certify(torch.nn.Linear(5, 2), np.zeros((2, 5), np.float32), 1e38, n0=10, n=100)


def test_diverging_training_stops_with_a_clear_error(digits):
    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, **dict(FAST, lr=1e30))
    with pytest.raises(FloatingPointError, match="training diverged"):
        clf.fit(X[:200], y[:200])


def test_scorer_raises_on_labels_the_model_cannot_have(digits):
    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, **FAST).fit(X[:200], y[:200])
    scorer = certified_accuracy_scorer(0.25, n=100)
    assert 0.0 <= scorer(clf, X[200:230], y[200:230]) <= 1.0  # matching labels score
    with pytest.raises(ValueError, match="labels not seen in fit"):
        scorer(clf, X[200:230], y[200:230].astype(str))


def _hold_lock(path, ready):
    with exclusive_run(path):
        ready.set()
        time.sleep(30)


def test_a_second_writer_fails_at_once_and_touches_nothing(tmp_path):
    out = tmp_path / "run.tsv"
    ready = multiprocessing.get_context("fork").Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold_lock, args=(out, ready))
    holder.start()
    try:
        assert ready.wait(20)
        with pytest.raises(RunLockedError, match=f"process {holder.pid}"):
            certify_to_tsv(None, np.zeros((2, 3)), np.zeros(2), np.arange(2), out, run_info={},
                           n0=1, n=1, alpha=0.1, batch_size=1, random_state=0)
        assert not out.exists()
    finally:
        holder.kill()
        holder.join()
    with exclusive_run(out):  # a killed holder leaves no stale lock
        pass


def test_a_failed_first_call_leaves_nothing_that_blocks_the_rerun(tmp_path, digits):
    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, **FAST).fit(X[:100], y[:100])
    out = tmp_path / "run.tsv"
    with pytest.raises(ValueError, match="expecting 64 features"):
        certify_to_tsv(clf, X[:4, :32], y[:4], np.arange(4), out, run_info={"a": 1}, n0=10,
                       n=50, alpha=0.01, batch_size=50, random_state=0)
    assert not out.exists() and not (tmp_path / "run.tsv.run.json").exists()
    certify_to_tsv(clf, X[:4], y[:4], np.arange(4), out, run_info={"a": 2}, n0=10, n=50,
                   alpha=0.01, batch_size=50, random_state=0)
    assert len(read_certification_tsv(out).radius) == 4


@pytest.mark.parametrize("row,message", [
    ("0\t1\t1\tnan\t1\t0:00:01", "not a finite number"),
    ("0\t1\t1\t-0.5\t1\t0:00:01", "not a finite number"),
    ("0\t1\t1\tinf\t1\t0:00:01", "not a finite number"),
])
def test_report_rejects_bad_radii(tmp_path, row, message):
    path = tmp_path / "bad.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n" + row + "\n")
    with pytest.raises(ValueError, match=message):
        read_certification_tsv(path)


def test_report_rejects_duplicate_rows_and_binary_files(tmp_path):
    path = tmp_path / "dup.tsv"
    row = "3\t1\t1\t0.5\t1\t0:00:01\n"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n" + row + row)
    with pytest.raises(ValueError, match=r"duplicate rows for idx \[3\]"):
        read_certification_tsv(path)
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        read_certification_tsv(path)


def test_cuda_without_a_gpu_is_a_clear_error_and_set_params_moves_the_network(
        digits, monkeypatch):
    X, y = digits
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU.*device='cpu'"):
        GaussianAugClassifier(device="cuda", **FAST).fit(X[:100], y[:100])
    clf = GaussianAugClassifier(**FAST).fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="no CUDA GPU"):
        clf.set_params(device="cuda")
    assert clf.device == "cpu"  # refused before anything changed
    moved = clf.set_params(device=torch.device("cpu"))
    assert next(moved.module_.parameters()).device == torch.device("cpu")
    assert moved.predict(X[:3]).shape == (3,)


def test_network_mismatches_get_our_errors_not_torchs(digits):
    from smoothsk.models import LeNet

    X, y = digits
    with pytest.raises(ValueError, match="cannot process inputs of shape \\(64,\\).*reshape X"):
        GaussianAugClassifier(module=LeNet, **FAST).fit(X[:100], y[:100])
    small = torch.nn.Sequential(torch.nn.Linear(64, 3))
    with pytest.raises(ValueError, match="returns 3 logits but fit saw 10 classes"):
        GaussianAugClassifier(module=small, **FAST).fit(X[:100], y[:100])
    clf = GaussianAugClassifier(**FAST)
    clf.partial_fit(X[:50][y[:50] < 5], y[:50][y[:50] < 5])
    with pytest.raises(ValueError, match="pass every label on the first call"):
        clf.partial_fit(X[50:100], y[50:100])


def test_help_shows_defaults():
    from smoothsk.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["certify"].format_help()
    assert "(default: 100000)" in text and "(default: 0.001)" in text


def test_progress_lines_in_logs_and_bars_with_verbose(digits, capsys):
    import io

    from smoothsk.progress import LogProgress, progress_bar

    log = io.StringIO()  # not a terminal: complete lines, not a redrawn bar
    bar = progress_bar(4, "certify", file=log, interval=0.0)
    assert isinstance(bar, LogProgress)
    for _ in range(4):
        bar.update(1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("certify: 4/4 inputs (100%),")
    assert "s left" in lines[0]
    X, y = digits
    clf = GaussianAugClassifier(**FAST).fit(X[:100], y[:100])
    clf.set_params(verbose=1).certify(X[:3], n=50)
    assert "GaussianAugClassifier certify: 3/3 inputs (100%)" in capsys.readouterr().err
    clf.set_params(verbose=0).certify(X[:3], n=50)
    assert capsys.readouterr().err == ""


def test_sigma_changed_after_fit_is_refused_until_refit_and_kept_in_model_files(digits,
                                                                               tmp_path):
    from smoothsk import GaussianAugClassifier, PretrainedSmoothingClassifier
    from smoothsk.io.model_file import load_model, save_model

    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, **dict(FAST, max_epochs=1)).fit(X[:100], y[:100])
    clf.set_params(sigma=0.5)
    for call in (lambda: clf.certify(X[:3]), lambda: clf.predict(X[:3]),
                 lambda: clf.certify_radius(X[:3], 0.1)):
        with pytest.raises(ValueError, match="trained at sigma=0.25, but its sigma is now 0.5"):
            call()
    clf.set_params(sigma=0.25)
    clf.certify(X[:3], n=20)  # back at the trained σ
    save_model(clf, tmp_path / "m")
    loaded = load_model(tmp_path / "m").set_params(sigma=1.0)
    with pytest.raises(ValueError, match="trained at sigma=0.25"):
        loaded.predict(X[:3])
    clf.set_params(sigma=0.5).fit(X[:100], y[:100])  # refit: now trained at 0.5
    assert clf.trained_sigma_ == 0.5 and len(clf.predict(X[:3])) == 3
    # smoothing a fitted classifier trains nothing: any σ is its own smoothed classifier
    pretrained = PretrainedSmoothingClassifier(clf, sigma=0.25, n=50, n_predict=20).fit(
        X[:50], y[:50])
    pretrained.set_params(sigma=0.75)
    assert len(pretrained.predict(X[:3])) == 3


def test_alpha_set_after_fit_complex_inputs_and_tsv_breaking_labels_are_refused(digits,
                                                                               tmp_path):
    from smoothsk import GaussianAugClassifier, certify
    from smoothsk.io.runs import certify_to_tsv

    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, **dict(FAST, max_epochs=1)).fit(X[:100], y[:100])
    clf.set_params(alpha=5)  # would never abstain: every p-value is <= 5
    with pytest.raises(ValueError, match="alpha must be a float in the open interval"):
        clf.predict_or_abstain(X[:3])
    clf.set_params(alpha=0.001)
    with pytest.raises(ValueError, match="X is complex"):
        certify(clf.module_, X[:3].astype(np.complex64), 0.25, n=10)
    names = np.array(["zero", "one\tuno"] + [f"c{k}" for k in range(2, 10)])[y]
    named = GaussianAugClassifier(sigma=0.25, **dict(FAST, max_epochs=1)).fit(X[:100],
                                                                             names[:100])
    out = tmp_path / "c.tsv"
    with pytest.raises(ValueError, match="holds a tab or a line break"):
        certify_to_tsv(named, X[:6], names[:6], np.arange(6), out, run_info={}, n0=10, n=20,
                       alpha=0.01, batch_size=100, random_state=0)
    assert not out.exists()


@pytest.fixture()
def full_disk(tmp_path):
    """A 64 KiB tmpfs, filled (needs the right to mount, as root)."""
    import subprocess

    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        with open(mount / "filler", "wb") as stream:
            try:
                stream.write(b"x" * 128 * 1024)
            except OSError:
                pass
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_the_lock_file_goes_even_when_the_disk_is_full(full_disk):
    out = full_disk / "run.tsv"
    with pytest.raises(OSError, match="No space"):
        with exclusive_run(out):
            with open(out, "w") as stream:  # the run's own output cannot be written
                stream.write("x" * 100_000)
                stream.flush()
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "run.tsv"]
    assert not (full_disk / "run.tsv.lock").exists()
