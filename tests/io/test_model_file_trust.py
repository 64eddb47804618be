"""Model files choose no code, command or path: every payload planted in a document's
parameters is refused on load, and nothing it names runs or appears on disk."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from conftest import TINY_FIT

from smoothsk import GaussianAugClassifier
from smoothsk.io.model_file import check_stored_param, load_classifier, load_model, save_model

FAST = TINY_FIT


def _marker_command(marker):
    # a "compiler" that leaves a marker, then compiles, so the attack would go unseen
    return [f"sh -c 'touch {marker}; exec g++ \"$@\"' sh"]


# (name, parameters the document gains, whether the weights get compile's prefix)
PAYLOADS = [
    ("inductor cpp.cxx runs a command",
     lambda m: {"compile": True, "compile__options": {"cpp.cxx": _marker_command(m)}}, True),
    ("inductor trace.debug_dir writes a path",
     lambda m: {"compile": True, "compile__options": {"trace.enabled": True,
                                                      "trace.debug_dir": str(m)}}, True),
    ("inductor cuda.cutlass_dir names a path",
     lambda m: {"compile": True, "compile__options": {"cuda.cutlass_dir": str(m)}}, True),
    ("inductor options under a mode name",
     lambda m: {"compile": True, "compile__mode": {"cpp.cxx": _marker_command(m)}}, True),
    ("a backend outside the fixed set",
     lambda m: {"compile": True, "compile__backend": "os.system"}, True),
    ("compile as a string", lambda m: {"compile": "sh"}, False),
    ("callbacks' arguments name a directory",
     lambda m: {"callbacks__checkpoint__dirname": str(m)}, False),
    ("a callback's sink", lambda m: {"callbacks__print_log__sink": {"class": "os.system"}},
     False),
    ("the DataLoader's collate_fn is a class",
     lambda m: {"iterator_train__collate_fn": {"class": "smoothsk.models.MLP"}}, False),
    ("the DataLoader's worker_init_fn",
     lambda m: {"iterator_valid__worker_init_fn": {"class": "torch.optim.sgd.SGD"}}, False),
    ("the DataLoader's start method", lambda m: {"iterator_train__multiprocessing_context":
                                                 "forkserver"}, False),
    ("a DataLoader option holding a path", lambda m: {"iterator_train__num_workers": str(m)},
     False),
    ("iterator_train names a loss instead of a DataLoader",
     lambda m: {"iterator_train": {"class": "torch.nn.modules.loss.MSELoss"}}, False),
    ("dataset names an optimizer", lambda m: {"dataset": {"class": "torch.optim.sgd.SGD"}},
     False),
    ("dataset arguments", lambda m: {"dataset__length": 3}, False),
    ("a class inside a network argument",
     lambda m: {"module__hidden_units": [{"class": "smoothsk.models.MLP"}]}, False),
    ("a dict as a parameter", lambda m: {"sigma": {"path": str(m)}}, False),
    ("a nested model outside classifier", lambda m: {"module": {"model": "classifier"}}, False),
    ("torch_load_kwargs turn pickles on",
     lambda m: {"torch_load_kwargs": {"weights_only": False}}, False),
    ("the meta device", lambda m: {"device": "meta"}, False),
    ("a device string with a command", lambda m: {"device": f"cpu; touch {m}"}, False),
    ("a device of a foreign backend", lambda m: {"device": "privateuseone"}, False),
    ("predict_nonlinearity names a class",
     lambda m: {"predict_nonlinearity": {"class": "smoothsk.models.MLP"}}, False),
]


@pytest.fixture(scope="module")
def saved(digits, tmp_path_factory):
    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, **FAST).fit(X[:100], y[:100])
    path = tmp_path_factory.mktemp("trust") / "good.smoothsk"
    save_model(clf, path)
    return path


def _plant(saved, tmp_path, params: dict, compiled: bool):
    from smoothsk.io.model_file import weights_digest

    archive = torch.load(saved, weights_only=True)
    document = json.loads(archive["document"])
    document["params"].update(params)
    if compiled:  # what skorch's compiled module would hold
        archive["state_dict"] = {"_orig_mod." + k: v for k, v in archive["state_dict"].items()}
    # as a file written by such a model would record (the digest guards against damage,
    # not against a crafted file: whoever writes a file chooses its weights anyway)
    document["weights_sha256"] = weights_digest(archive["state_dict"])
    archive["document"] = json.dumps(document)
    path = tmp_path / "planted.smoothsk"
    torch.save(archive, path)
    return path


def _cli(*args):
    from smoothsk.cli import main

    threads = torch.get_num_threads()
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
    return code, err.getvalue()


@pytest.mark.parametrize("label, payload, compiled", PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_a_planted_parameter_is_refused_and_runs_nothing(saved, tmp_path, digits, label,
                                                         payload, compiled):
    marker = tmp_path / "marker"
    params = payload(marker)
    path = _plant(saved, tmp_path, params, compiled)
    key = next(iter(params)) if len(params) == 1 else [k for k in params if k != "compile"][0]
    for load in (load_model, load_classifier):
        with pytest.raises(ValueError, match=f"sets {key}=.*may not choose"):
            load(path)
    code, err = _cli("certify", path, "--dataset", "digits", "--max", 2, "--n0", 10,
                     "--n", 20, "--out", tmp_path / "c.tsv", "--quiet")
    assert code == 2 and "may not choose" in err and key in err
    assert not (tmp_path / "c.tsv").exists()
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == ["planted.smoothsk"]


@pytest.mark.slow
def test_the_command_payload_would_run_without_the_value_check(saved, tmp_path, digits,
                                                               monkeypatch):
    """The same document, with the check switched off, does run its "compiler": the test
    above plants a working attack, not a file that fails for another reason."""
    from smoothsk.io import model_file

    X, _ = digits
    marker = tmp_path / "marker"
    path = _plant(saved, tmp_path, PAYLOADS[0][1](marker), compiled=True)
    monkeypatch.setattr(model_file, "check_stored_param", lambda name, value: None)
    model = load_model(path)
    with contextlib.suppress(Exception):  # the compile may fail after the command ran
        model.predict(X[:2])
    assert marker.exists()


def test_the_estimator_class_must_be_a_smoothsk_estimator(saved, tmp_path):
    archive = torch.load(saved, weights_only=True)
    document = json.loads(archive["document"])
    archive["document"] = json.dumps(dict(document, estimator="torch.optim.sgd.SGD"))
    torch.save(archive, tmp_path / "odd")
    with pytest.raises(ValueError, match="not a smoothsk estimator"):
        load_model(tmp_path / "odd")


def test_allowed_compile_settings_and_devices_load_and_predict(saved, tmp_path, digits):
    X, _ = digits
    path = _plant(saved, tmp_path, {"compile": True, "compile__backend": "eager",
                                    "compile__mode": None, "device": "cpu"}, compiled=True)
    with pytest.raises(ValueError, match="compile__mode is one of"):
        load_model(path)  # None is not a mode
    path = _plant(saved, tmp_path, {"compile": True, "compile__backend": "eager",
                                    "compile__dynamic": False}, compiled=True)
    model = load_model(path)
    np.testing.assert_array_equal(model.predict(X[:5]), load_model(saved).predict(X[:5]))


def test_save_refuses_what_load_would_refuse_and_drops_callback_arguments(digits, tmp_path):
    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, callbacks__print_log__floatfmt=".3f",
                                **FAST).fit(X[:60], y[:60])
    save_model(clf, tmp_path / "m")  # callbacks' arguments are training-time: not stored
    document = json.loads(torch.load(tmp_path / "m", weights_only=True)["document"])
    assert not [k for k in document["params"] if k.startswith("callbacks")]
    clf.compile__mode = "fastest"  # unused while compile=False, so fit takes it
    with pytest.raises(ValueError, match="compile__mode='fastest' cannot be stored"):
        save_model(clf, tmp_path / "n")
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("name, value, allowed", [
    ("compile", True, True), ("compile__mode", "max-autotune", True),
    ("compile__options", {"max_autotune": True}, False), ("device", "cuda:1", True),
    ("device", "cuda:x", False), ("iterator_train__shuffle", True, True),
    ("module", {"class": "smoothsk.models.MLP"}, True), ("lr", {"class": "x.Y"}, False),
    ("module__hidden_units", {"tuple": [32, 16]}, True), ("torch_load_kwargs", None, True),
    ("estimators", [{"tuple": ["a", {"model": "member0"}]}], True),
    ("estimators", [{"tuple": ["a", {"class": "os.system"}]}], False),
    ("estimators", [{"tuple": ["a", "member0"]}], False), ("estimators", [], False),
    ("estimators", "member0", False), ("classifier", {"model": "member0"}, True),
])
def test_check_stored_param_table(name, value, allowed):
    assert (check_stored_param(name, value) is None) is allowed


def test_a_document_or_sidecar_nested_200000_deep_is_a_clear_error(saved, tmp_path):
    from smoothsk.io.report import read_certification_tsv

    archive = torch.load(saved, weights_only=True)
    archive["document"] = "[" * 200_000 + "]" * 200_000
    torch.save(archive, tmp_path / "deep.smoothsk")
    with pytest.raises(ValueError, match="corrupt model document"):
        load_model(tmp_path / "deep.smoothsk")
    tsv = tmp_path / "r.tsv"
    tsv.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01\n")
    tsv.with_name("r.tsv.run.json").write_text("[" * 200_000 + "]" * 200_000)
    run = read_certification_tsv(tsv)
    assert run.settings is None and run.radius.tolist() == [0.5]


def test_a_training_info_that_is_not_a_mapping_is_ignored(saved, tmp_path, digits):
    X, _ = digits
    archive = torch.load(saved, weights_only=True)
    document = json.loads(archive["document"])
    archive["document"] = json.dumps(dict(document, training_info=["dataset", "digits"]))
    torch.save(archive, tmp_path / "odd.smoothsk")
    model = load_model(tmp_path / "odd.smoothsk")  # the CLI reads training_info_.get(...)
    assert not hasattr(model, "training_info_") and len(model.predict(X[:2])) == 2


class _RunsOnLoad:
    # what a pickled payload looks like: unpickling it would call os.system
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("content", ["a global", "garbage"])
def test_a_file_that_holds_more_than_data_is_refused_in_one_line(tmp_path, content):
    from smoothsk.io.files import load_data_only

    path = tmp_path / "m.smoothsk"
    if content == "a global":
        torch.save({"document": _RunsOnLoad()}, path)
    else:
        path.write_bytes(b"not an archive" * 8)
    with pytest.raises(ValueError) as refused:
        load_model(path)
    message = str(refused.value)
    # one line naming the file, without torch's advice to load with weights_only=False
    assert "\n" not in message and str(path) in message
    assert "weights_only" not in message and "trusted source" not in message
    if content == "a global":
        assert "more than data" in message and "system" in message
    with pytest.raises(ValueError, match="not a readable torch archive|more than data"):
        load_data_only(path)
