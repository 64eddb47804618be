"""The method registry: every registered method trains, saves, loads, and is offered by
``smoothsk train`` with its own options; nothing else lists the methods."""

import contextlib
import io
import re

import numpy as np
import pytest
from conftest import TINY_FIT

from smoothsk import GaussianAugClassifier, SmoothedClassifier
from smoothsk.cli import build_parser, main
from smoothsk.io.model_file import load_model, save_model
from smoothsk.io.report import CertificationRun
from smoothsk.methods.registry import (
    ASSEMBLED,
    METHODS,
    display_name,
    method_class,
    method_options,
)

COMMAND_METHODS = {**METHODS, **ASSEMBLED}  # what ``smoothsk train --method`` offers

FAST = TINY_FIT


@pytest.fixture(scope="module")
def base_model(digits):
    X, y = digits
    return GaussianAugClassifier(sigma=0.25, **FAST).fit(X[:120], y[:120])


def _side_models(name, base_model):
    """What each method reads besides the data."""
    return {"crt": dict(teacher=base_model), "denoised": dict(classifier=base_model),
            "catrs": dict(target_model=base_model, target_draws=10)}.get(name, {})


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_trains_saves_and_loads(name, base_model, digits, tmp_path):
    X, y = digits
    cls = method_class(name)
    assert issubclass(cls, SmoothedClassifier) and cls.method_name == name
    assert cls.display_name and display_name(name) == cls.display_name
    params = dict(FAST, **_side_models(name, base_model))
    if name == "denoised":  # the denoiser is the network: an MLP of the input's width
        params.pop("module__hidden_units")
    clf = cls(**params).fit(X[:120], y[:120])
    save_model(clf, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is cls
    np.testing.assert_array_equal(loaded.predict(X[:8]), clf.predict(X[:8]))


@pytest.mark.parametrize("name", list(METHODS))
def test_methods_train_through_the_one_fit_and_its_hooks(name):
    # A method adds a loss and hooks (prepare_side_models, classes_for_fit, ...), never a
    # fit or partial_fit of its own that a fix to the base's would miss.
    cls = method_class(name)
    assert cls.fit is SmoothedClassifier.fit
    assert cls.partial_fit is SmoothedClassifier.partial_fit


@pytest.mark.parametrize("name", ["crt", "denoised", "catrs"])
def test_side_models_are_prepared_by_fit_and_kept_by_partial_fit(name, base_model, digits,
                                                                 monkeypatch):
    X, y = digits
    cls = method_class(name)
    params = dict(FAST, **_side_models(name, base_model))
    if name == "denoised":
        params.pop("module__hidden_units")
    calls = []
    hook = cls.prepare_side_models

    def spy(self, X, y, *, partial):
        calls.append(partial)
        return hook(self, X, y, partial=partial)

    monkeypatch.setattr(cls, "prepare_side_models", spy)
    clf = cls(**params).fit(X[:120], y[:120])
    prepared = {key: value for key, value in vars(clf).items()
                if key in cls.prepared_side_models}
    assert set(prepared) == set(cls.prepared_side_models)
    clf.partial_fit(X[:120], y[:120])
    assert calls == [False]  # prepared once by fit, kept by partial_fit
    for key, value in prepared.items():
        assert getattr(clf, key) is value, key
    fresh = cls(**params).partial_fit(X[:120], y[:120])  # no fit: partial_fit prepares
    assert calls == [False, True]
    assert fresh.side_models_prepared()


def _help(*args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(list(args))
    return out.getvalue()


@pytest.mark.parametrize("name", list(COMMAND_METHODS))
def test_every_method_is_offered_with_its_own_options(name):
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    method = next(a for a in train._actions if a.dest == "method")
    assert list(method.choices) == list(COMMAND_METHODS)
    text = _help("train", "--method", name, "--help")
    own = method_options(COMMAND_METHODS[name])
    for option in own:
        assert re.search(rf"^  --{option.replace('_', '-')}\b", text, re.M)
    if own:
        assert f"{COMMAND_METHODS[name].display_name} options" in text
    others = {o for cls in COMMAND_METHODS.values() for o in method_options(cls)} - set(own)
    for option in others:  # another method's options stay out of this method's help
        assert not re.search(rf"^  --{option.replace('_', '-')}\b", text, re.M)


def test_options_formerly_missing_from_the_command_line_are_there():
    """mix_radius, deferred, epsilon_warmup, confidence_mask, clip_range and
    allow_sigma_mismatch were not settable but through --set."""
    expected = {"smoothmix": ["mix_radius", "clip_range"], "macer": ["deferred"],
                "catrs": ["epsilon_warmup", "confidence_mask"], "smoothadv": ["clip_range"],
                "crt": ["allow_sigma_mismatch"]}
    for name, options in expected.items():
        assert set(options) <= set(method_options(METHODS[name]))
    parse = method_options(METHODS["smoothmix"])["clip_range"].parse
    assert parse("(0, 255)") == (0.0, 255.0) and parse("none") is None
    with pytest.raises(ValueError, match="tuple"):
        parse("0..1")
    assert method_options(METHODS["catrs"])["confidence_mask"].parse("true") is True


def test_an_option_of_another_method_is_refused_with_what_to_do(tmp_path, capsys):
    code = main(["train", "--dataset", "digits", "--method", "gaussian", "--eta", "3",
                 "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "--eta is not an option of --method gaussian" in err
    assert not (tmp_path / "m").exists()


def test_reports_name_methods_from_the_registry():
    run = CertificationRun("r", np.arange(2), np.zeros(2), np.ones(2, bool),
                           settings={"describes": {"method": "catrs", "sigma": 0.5}})
    assert run.label == "CAT-RS, σ = 0.5"
    assert display_name("denoised") == "Denoised" and display_name("other") == "other"
    assert display_name("pretrained") == "Pretrained"
    assert display_name("ensemble") == "Ensemble"
    assert method_options(ASSEMBLED["ensemble"]).keys() == {"voting", "consensus"}
    ensemble = CertificationRun("e", np.arange(2), np.zeros(2), np.ones(2, bool), settings={
        "describes": {"method": "ensemble", "sigma": 0.5, "members": 3}})
    assert ensemble.label == "Ensemble of 3, σ = 0.5"
    with pytest.raises(ValueError, match="method must be one of"):
        method_class("magic")


def test_the_command_line_says_its_version(capsys):
    from smoothsk import __version__

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"smoothsk {__version__}"


def test_every_estimators_docstring_lists_the_shared_parameters_with_its_own():
    """An estimator's page documents σ, n, α, lr, ... as well as its own parameters
    (they reach it through **kwargs, so numpydoc would show only its own)."""
    import inspect

    from smoothsk.methods.registry import METHODS

    for cls in METHODS.values():
        doc = inspect.getdoc(cls)
        names = {line.split(":")[0].strip() for line in doc.splitlines()
                 if line and not line.startswith(" ") and " : " in line}
        assert {"sigma", "n0, n", "alpha", "precision", "n_threads"} <= names, cls.__name__
        assert doc.count("\nParameters\n----------\n") == 1, cls.__name__
