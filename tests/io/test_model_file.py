"""Safe model files: round trip, allow-list, no code execution, old pickles refused."""

import hashlib
import os
import pickle
import zipfile

import joblib
import numpy as np
import pytest
import torch
from conftest import SHORT_FIT

from smoothsk import CRTStudent, GaussianAugClassifier, MACERClassifier
from smoothsk.io.model_file import (
    FORMAT_VERSION,
    load_model,
    register_network,
    save_model,
    weights_digest,
)
from smoothsk.models import CIFARResNet, LeNet

FAST = SHORT_FIT


@pytest.fixture(scope="module")
def fitted(digits):
    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, module__hidden_units=(32,), **FAST)
    clf.fit(X[:300], y[:300])
    clf.training_info_ = {"dataset": "digits", "epochs": 2}
    return clf


def test_round_trip_gives_identical_predictions_and_certificates(fitted, digits, tmp_path):
    X, _ = digits
    path = tmp_path / "model.smoothsk"
    save_model(fitted, path)
    assert zipfile.is_zipfile(path)
    loaded = load_model(path)
    assert type(loaded) is GaussianAugClassifier
    assert loaded.get_params()["module__hidden_units"] == (32,)
    np.testing.assert_array_equal(loaded.classes_, fitted.classes_)
    assert loaded.training_info_ == fitted.training_info_
    assert loaded.smoothsk_version_
    for name, tensor in fitted.module_.state_dict().items():
        torch.testing.assert_close(loaded.module_.state_dict()[name], tensor)
    np.testing.assert_array_equal(loaded.predict(X[:20]), fitted.predict(X[:20]))
    a, b = loaded.certify(X[:10]), fitted.certify(X[:10])
    np.testing.assert_array_equal(a.radius, b.radius)


def test_string_classes_tuple_params_and_lenet(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((40, 1, 28, 28)).astype(np.float32)
    y = np.array(["cat", "dog"])[np.arange(40) % 2]
    clf = MACERClassifier(module=LeNet, module__num_classes=2, num_noise=2, deferred=1,
                          classes=["dog", "cat"], **dict(FAST, max_epochs=1)).fit(X, y)
    save_model(clf, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert list(loaded.classes_) == ["dog", "cat"] and loaded.deferred == 1
    assert loaded.module is LeNet
    np.testing.assert_array_equal(loaded.predict(X[:5]), clf.predict(X[:5]))


def test_a_batchnorm_network_round_trips_with_its_running_statistics(tmp_path):
    # BatchNorm's num_batches_tracked is a 0-d tensor, which has no byte view of its own:
    # the digest of the weights must still cover it (and every other entry).
    rng = np.random.default_rng(0)
    X = rng.random((32, 1, 12, 12)).astype(np.float32)
    y = np.arange(32) % 2
    clf = GaussianAugClassifier(
        sigma=0.25, module=CIFARResNet, module__depth=8, module__in_channels=1,
        module__num_classes=2, module__mean=None, **dict(FAST, max_epochs=1)).fit(X, y)
    state = clf.module_.state_dict()
    assert any(tensor.ndim == 0 for tensor in state.values())
    save_model(clf, tmp_path / "resnet.smoothsk")
    loaded = load_model(tmp_path / "resnet.smoothsk")
    for name, tensor in state.items():
        torch.testing.assert_close(loaded.module_.state_dict()[name], tensor)
    np.testing.assert_array_equal(loaded.predict(X[:6]), clf.predict(X[:6]))


def test_the_weights_digest_of_nd_tensors_is_their_bytes_in_order():
    # Files written before 0-d tensors were supported recorded this digest: it must not move.
    state = {"b": torch.arange(6, dtype=torch.float32).view(2, 3), "a": torch.ones(2)}
    expected = hashlib.sha256()
    for name in ("a", "b"):
        tensor = state[name]
        expected.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        expected.update(tensor.numpy().tobytes())
    assert weights_digest(state) == expected.hexdigest()
    with_scalar = dict(state, n=torch.tensor(7))
    assert weights_digest(with_scalar) != weights_digest(dict(state, n=torch.tensor(8)))


def test_crt_student_keeps_its_sigma_without_the_teacher(fitted, digits, tmp_path):
    X, y = digits
    student = CRTStudent(teacher=fitted, module__hidden_units=(16,), **FAST).fit(X[:200], y[:200])
    save_model(student, tmp_path / "s")
    loaded = load_model(tmp_path / "s")
    assert loaded.teacher is None and loaded.noise_level == 0.25
    np.testing.assert_array_equal(loaded.predict(X[:10]), student.predict(X[:10]))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_never_runs_without_trusted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    joblib.dump(_Evil(), "evil.pkl")
    with pytest.raises(ValueError, match="is a pickle.*trusted=True"):
        load_model("evil.pkl")
    assert not (tmp_path / "pwned").exists()
    # a pickle inside a torch archive is refused by the weights-only unpickler
    torch.save({"document": _Evil()}, "evil.pt")
    with pytest.raises(ValueError, match="not a readable smoothsk model file"):
        load_model("evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_old_joblib_file_loads_only_when_trusted(fitted, tmp_path):
    joblib.dump(fitted, tmp_path / "old.pkl")
    with pytest.raises(ValueError, match="is a pickle .*--trust-pickle"):
        load_model(tmp_path / "old.pkl")
    assert isinstance(load_model(tmp_path / "old.pkl", trusted=True), GaussianAugClassifier)
    pickle.dump([1, 2], open(tmp_path / "list.pkl", "wb"))
    with pytest.raises(ValueError, match="does not hold a fitted smoothsk estimator"):
        load_model(tmp_path / "list.pkl", trusted=True)


class _MyNet(torch.nn.Module):
    def __init__(self, in_features=64, num_classes=10):
        super().__init__()
        self.linear = torch.nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_user_networks_need_registration(digits, tmp_path):
    X, y = digits
    clf = GaussianAugClassifier(module=_MyNet, **dict(FAST, max_epochs=1)).fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="register_network"):
        save_model(clf, tmp_path / "u")
    register_network(_MyNet)
    save_model(clf, tmp_path / "u")
    assert load_model(tmp_path / "u").module is _MyNet
    with pytest.raises(TypeError, match="torch.nn.Module subclass"):
        register_network(int)


def test_newer_format_and_unknown_class_are_refused(fitted, tmp_path):
    import json

    save_model(fitted, tmp_path / "m")
    archive = torch.load(tmp_path / "m", weights_only=True)
    document = json.loads(archive["document"])
    torch.save(dict(archive, document=json.dumps(dict(document,
                                                      format_version=FORMAT_VERSION + 1))),
               tmp_path / "newer")
    with pytest.raises(ValueError, match="format version 2"):
        load_model(tmp_path / "newer")
    document["params"]["module"] = {"class": "os.system"}
    torch.save(dict(archive, document=json.dumps(document)), tmp_path / "odd")
    with pytest.raises(ValueError, match="'os.system', which is not allowed"):
        load_model(tmp_path / "odd")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="not fitted"):
        save_model(GaussianAugClassifier(), tmp_path / "x")


def test_certificates_sidecars_and_model_files_carry_the_version(fitted, digits, tmp_path):
    import json

    import smoothsk
    from smoothsk.io.runs import certify_to_tsv

    X, y = digits
    assert fitted.certify(X[:2], n=50).smoothsk_version == smoothsk.__version__
    certify_to_tsv(fitted, X[:2], y[:2], np.arange(2), tmp_path / "r.tsv", run_info={}, n0=10,
                   n=50, alpha=0.01, batch_size=50, random_state=0)
    sidecar = json.loads((tmp_path / "r.tsv.run.json").read_text())
    assert sidecar["smoothsk_version"] == smoothsk.__version__
    save_model(fitted, tmp_path / "m")
    assert load_model(tmp_path / "m").smoothsk_version_ == smoothsk.__version__


def test_load_classifier_reads_what_can_be_smoothed(tmp_path):
    import joblib
    from sklearn.linear_model import LogisticRegression

    from smoothsk.io.model_file import load_classifier

    X = np.random.default_rng(0).random((40, 3))
    y = (X[:, 0] > 0.5).astype(int)
    joblib.dump(LogisticRegression().fit(X, y), tmp_path / "fitted.joblib")
    joblib.dump(LogisticRegression(), tmp_path / "unfitted.joblib")
    joblib.dump({"weights": [1, 2]}, tmp_path / "dict.joblib")
    assert hasattr(load_classifier(tmp_path / "fitted.joblib", trusted=True), "coef_")
    with pytest.raises(ValueError, match="trusted=True"):
        load_classifier(tmp_path / "fitted.joblib")  # a pickle can run code
    for name in ("unfitted", "dict"):
        with pytest.raises(ValueError, match="does not hold a fitted classifier"):
            load_classifier(tmp_path / f"{name}.joblib", trusted=True)
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing.joblib", trusted=True)


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    from smoothsk.io.files import atomic_write

    target = tmp_path / "out.bin"
    atomic_write(target, lambda stream: stream.write(b"first"))
    assert target.read_bytes() == b"first"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_current_umask())

    def fails(stream):
        stream.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fails)
    assert target.read_bytes() == b"first"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary left


def test_atomic_write_text_writes_utf8_and_replaces_whole(tmp_path):
    from smoothsk.io.files import atomic_write_text

    target = tmp_path / "results.md"
    atomic_write_text(target, "σ = 0.5: ACR 1.105 ± 0.008\n")
    atomic_write_text(target, "σ = 1.0\n")  # a shorter text leaves nothing of the longer
    assert target.read_bytes() == "σ = 1.0\n".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["results.md"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_file_naming_a_class_by_its_old_module_still_loads(digits, tmp_path):
    """PretrainedSmoothingClassifier moved from methods.denoised to methods.pretrained:
    a file written before the move names the old path and must still read as the class."""
    import json

    from smoothsk import PretrainedSmoothingClassifier
    from smoothsk.io.model_file import MOVED_CLASSES

    X, y = digits
    inner = GaussianAugClassifier(sigma=0.25, module__hidden_units=(16,), **FAST).fit(X[:200],
                                                                                      y[:200])
    clf = PretrainedSmoothingClassifier(inner, sigma=0.25, n_predict=50, random_state=0)
    clf.fit(X[:200], y[:200])
    save_model(clf, tmp_path / "new")
    archive = torch.load(tmp_path / "new", weights_only=True)
    document = json.loads(archive["document"])
    old = "smoothsk.methods.denoised.PretrainedSmoothingClassifier"
    assert MOVED_CLASSES[old] == document["estimator"]
    torch.save(dict(archive, document=json.dumps(dict(document, estimator=old))),
               tmp_path / "old")
    loaded = load_model(tmp_path / "old")
    assert type(loaded) is PretrainedSmoothingClassifier
    np.testing.assert_array_equal(loaded.predict(X[:20]), clf.predict(X[:20]))


def test_a_damaged_copy_is_refused_not_loaded_as_another_network(fitted, tmp_path):
    """torch's archive reader ignores the zip's CRCs: 64 flipped bytes inside the largest
    tensor used to load, and certify, another network.  The document's weights digest
    catches it."""
    import struct

    from smoothsk.io.model_file import weights_digest

    save_model(fitted, tmp_path / "m.smoothsk")
    data = bytearray((tmp_path / "m.smoothsk").read_bytes())
    with zipfile.ZipFile(tmp_path / "m.smoothsk") as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
    name_length, extra_length = struct.unpack(
        "<HH", data[largest.header_offset + 26: largest.header_offset + 30])
    start = largest.header_offset + 30 + name_length + extra_length + largest.file_size // 2
    for k in range(64):
        data[start + k] ^= 0xFF
    (tmp_path / "flipped.smoothsk").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is damaged: its weights differ from the digest"):
        load_model(tmp_path / "flipped.smoothsk")
    # the digest covers names, dtypes, shapes and bytes
    state = {"w": torch.zeros(2, 3)}
    assert weights_digest(state) != weights_digest({"w": torch.zeros(3, 2)})
    assert weights_digest(state) != weights_digest({"v": torch.zeros(2, 3)})
    assert weights_digest(state) != weights_digest({"w": torch.zeros(2, 3, dtype=torch.float64)})
    assert load_model(tmp_path / "m.smoothsk").predict(np.zeros((1, 64), np.float32)).shape \
        == (1,)


def test_a_full_disk_under_torch_save_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    """torch.save's writer turns the failed write of a full disk into a RuntimeError
    ("unexpected pos ..."), which reached the user as a 39-line traceback from train."""
    import errno

    from smoothsk.io import files

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, stream):
            self.stream, self.written = stream, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.stream.write(data)

        def __getattr__(self, name):
            return getattr(self.stream, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

    monkeypatch.setattr(files.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    target = tmp_path / "m.smoothsk"
    with pytest.raises(OSError) as error:
        files.atomic_write(target, lambda stream: torch.save(torch.zeros(10_000), stream))
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary left
