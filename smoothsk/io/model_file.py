"""Model files that cannot run code when loaded.

A smoothsk model file is one ``torch.save`` archive holding only tensors and plain
data: the network's ``state_dict`` and a JSON document with the estimator's class, its
parameters, classes, input shape, training info, the library version and the format
version.  :func:`load_model` reads it with ``torch.load(weights_only=True)``, whose
unpickler refuses every object but tensors and built-in containers, and rebuilds the
estimator and its network from an allow-list: smoothsk's estimators and networks,
torch's optimizers and losses, and network classes registered with
:func:`register_network`.

The parameters pass an allow-list of *values* too
(:func:`smoothsk.io.stored_params.check_stored_param`), on save
and on load: a class may appear only where the estimator takes one, and only of the
kind that parameter takes (a network for ``module``, a loss for ``criterion``...);
``torch.compile`` is recorded as on/off with a mode and backend from fixed sets, never
with inductor options (which name compiler commands and output directories);
callbacks' arguments, ``torch_load_kwargs``, dataset arguments and every DataLoader
option that takes a function, a process start method or a device are refused; devices
are plain device names.  A file someone else made can therefore give wrong weights,
never choose code, a command or a path.

Pickle-based files (smoothsk 0.1's ``joblib`` format, or any pickle) can run arbitrary
code when loaded; :func:`load_model` reads them only with ``trusted=True``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from smoothsk.io.files import atomic_write, load_data_only
from smoothsk.io.stored_params import (
    CLASS_PARAMS,
    check_stored_param,
    decode_param,
    encode_param,
    is_saved,
)

__all__ = ["FORMAT_VERSION", "check_stored_param", "load_classifier", "load_model",
           "register_network", "save_model", "weights_digest"]

FORMAT_NAME = "smoothsk-model"
FORMAT_VERSION = 1
_NETWORKS: dict[str, type] = {}
# Classes that moved to another module since files were first written: the old name
# still reads as the class it named.
MOVED_CLASSES = {
    "smoothsk.methods.denoised.PretrainedSmoothingClassifier":
        "smoothsk.methods.pretrained.PretrainedSmoothingClassifier",
}


def register_network(cls: type) -> type:
    """Allow ``cls`` (a ``torch.nn.Module`` subclass) as a network in model files.

    Usable as a decorator.  Loading a file that names an unregistered class fails with
    an error that says to register it; registering is how a user says "I trust this
    class's code" (it is already imported, so nothing from the file runs).

    Parameters
    ----------
    cls : type
        A ``torch.nn.Module`` subclass whose code you trust.

    Returns
    -------
    type
        ``cls`` itself (so that it works as a decorator).
    """
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise TypeError(f"register_network takes a torch.nn.Module subclass; got {cls!r}.")
    _NETWORKS[_qualified(cls)] = cls
    return cls


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _allowed_classes() -> dict[str, type]:
    import skorch.dataset

    import smoothsk
    from smoothsk import models

    allowed = {_qualified(c): c for c in (
        models.MLP, models.LeNet, models.CIFARResNet, models.ImageNetResNet50,
        torch.utils.data.DataLoader, skorch.dataset.Dataset, skorch.dataset.ValidSplit,
    )}
    for name in dir(torch.optim):
        value = getattr(torch.optim, name)
        if isinstance(value, type) and issubclass(value, torch.optim.Optimizer):
            allowed[_qualified(value)] = value
    for name in dir(torch.nn):
        value = getattr(torch.nn, name)
        if isinstance(value, type) and issubclass(value, torch.nn.modules.loss._Loss):
            allowed[_qualified(value)] = value
    for name in smoothsk.__all__:
        value = getattr(smoothsk, name)
        if isinstance(value, type) and issubclass(value, smoothsk.SmoothedClassifier):
            allowed[_qualified(value)] = value
    for old, new in MOVED_CLASSES.items():  # files written before a class moved
        allowed[old] = allowed[new]
    allowed.update(_NETWORKS)
    return allowed


def _fitted_attributes(estimator) -> dict:
    attributes = {
        "classes": encode_param("classes_", np.asarray(estimator.classes_).tolist(), {}),
        "input_shape": list(estimator.input_shape_),
        "n_features_in": int(getattr(estimator, "n_features_in_", estimator.input_shape_[0])),
    }
    if hasattr(estimator, "sigma_"):  # CRTStudent: σ resolved from its teacher
        attributes["sigma_"] = float(estimator.sigma_)
    if getattr(estimator, "trained_sigma_", None) is not None:
        attributes["trained_sigma"] = float(estimator.trained_sigma_)
    if hasattr(estimator, "default_network_"):  # module=None: which network was built
        attributes["default_network"] = estimator.default_network_
    return attributes


def save_model(estimator, path) -> None:
    """Save a fitted smoothsk estimator in the safe format, atomically.

    Stored: the network's weights, the estimator's class and parameters (callbacks, a
    CRT teacher, a CAT-RS target model and a denoiser's surrogate are training-time
    objects and are not stored), ``classes_``, ``input_shape_``, ``training_info_`` and
    the library version.  The classifier that a
    :class:`~smoothsk.PretrainedSmoothingClassifier` or
    :class:`~smoothsk.DenoisedSmoothingClassifier` smooths is stored the same way, nested,
    when it is a smoothsk estimator; any other classifier (scikit-learn, skorch, a bare
    torch module) cannot be stored without pickle and is refused with what to do.

    Parameters
    ----------
    estimator : SmoothedClassifier
        A fitted smoothsk estimator (an ensemble's members are stored nested).
    path : str or Path
        The file to write (replaced whole, or left as it was).
    """
    archive = _archive(estimator, _allowed_classes())
    atomic_write(Path(path), lambda stream: torch.save(archive, stream))


def _archive(estimator, allowed: dict[str, type]) -> dict:
    """``{"document": json, "state_dict": tensors[, "models": {name: archive}]}``."""
    import smoothsk
    from smoothsk.base import unwrap_frozen

    if not hasattr(estimator, "module_"):
        raise ValueError(f"{type(estimator).__name__} is not fitted; fit it before saving.")
    allowed_names = {cls: name for name, cls in allowed.items() if name not in MOVED_CLASSES}
    if type(estimator) not in allowed_names:
        raise ValueError(f"{type(estimator).__name__} is not a smoothsk estimator.")
    ensemble = hasattr(estimator, "named_estimators_")  # members stored as nested models
    params = {name: encode_param(name, value, allowed_names)
              for name, value in estimator.get_params(deep=False).items()
              if is_saved(name) and name != "classifier"
              and not (ensemble and name in ("estimators", "n_jobs"))}
    for name, value in params.items():
        reason = check_stored_param(name, value)
        if reason is not None:
            raise ValueError(
                f"Parameter {name}={value!r} cannot be stored in a safe model file: {reason}. "
                f"Set it to its default (set_params({name}=...)) before saving.")
    models = {}
    if ensemble:
        members = []
        for i, ((name, _), member) in enumerate(zip(estimator.estimators,
                                                     estimator.estimators_)):
            models[f"member{i}"] = _archive(unwrap_frozen(member), allowed)
            members.append({"tuple": [str(name), {"model": f"member{i}"}]})
        params["estimators"] = members
        params["prefit"] = True  # the stored members are the fitted ones
    if hasattr(estimator, "classifier_") and not ensemble:  # the smoothed classifier, nested
        inner = unwrap_frozen(estimator.classifier_)
        if type(inner) not in allowed_names:
            raise ValueError(
                f"{type(estimator).__name__} smooths a {type(inner).__name__}, which the safe "
                "format cannot store (only smoothsk estimators can be). Save it with "
                "joblib.dump and load it with smoothsk.io.model_file.load_model(path, "
                "trusted=True) (CLI: --trust-pickle), from a source you trust."
            )
        models["classifier"] = _archive(inner, allowed)
        params["classifier"] = {"model": "classifier"}
        params["prefit"] = True  # the stored classifier is the fitted one
    info = getattr(estimator, "training_info_", None)
    state = {name: tensor.detach().cpu().contiguous()
             for name, tensor in estimator.module_.state_dict().items()}
    document = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "smoothsk_version": smoothsk.__version__,
        "estimator": allowed_names[type(estimator)], "params": params,
        "fitted": _fitted_attributes(estimator),
        "training_info": json.loads(json.dumps(info)) if info is not None else None,
        "weights_sha256": weights_digest(state),
    }
    archive = {"document": json.dumps(document), "state_dict": state}
    if models:
        archive["models"] = models
    return archive


def weights_digest(state_dict: dict) -> str:
    """SHA-256 of a ``state_dict``: every tensor's name, dtype, shape and bytes, by name.

    Model files record it and :func:`load_model` checks it, because torch's archive
    reader does not check the zip's CRCs: a damaged copy (a flipped bit inside a tensor)
    would otherwise load, and certify, another network.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict entry {name!r} is not a tensor")
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        # Flattened first: a 0-d tensor (BatchNorm's num_batches_tracked) has no byte view.
        raw = tensor.reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _read_archive(path: Path) -> dict:
    try:
        archive = load_data_only(path)
    except (ValueError, OSError) as exc:  # the restricted unpickler refuses anything but data
        raise ValueError(f"{path} is not a readable smoothsk model file: {exc}.") from exc
    if not isinstance(archive, dict) or "document" not in archive:
        raise ValueError(f"{path} is not a smoothsk model file.")
    return archive


def is_model_file(path) -> bool:
    """Whether ``path`` is a file in smoothsk's safe model format (read without running code).

    For a command about to replace ``path``: a file that is not one is someone else's.

    Parameters
    ----------
    path : str or Path
        Any path (a missing file or a directory is not a model file).
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        _read_archive(path)
    except ValueError:
        return False
    return True


def load_model(path, *, trusted: bool = False):
    """Load a fitted estimator saved by :func:`save_model`, without running any code.

    Parameters
    ----------
    path : path
    trusted : bool, default=False
        Also accept pickle-based files (smoothsk 0.1's format, or any joblib/pickle
        file).  Unpickling runs whatever code the file names: pass True only for a
        file whose origin you trust, and re-save it with :func:`save_model`.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a smoothsk model file, a pickle without ``trusted=True``, a newer format
        version, or a class outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file {path} does not exist.")
    if not zipfile.is_zipfile(path):
        if trusted:
            return _smoothsk_estimator(_load_pickle(path), path)
        with open(path, "rb") as stream:
            if stream.read(1) != b"\x80":  # every pickle of protocol >= 2 starts so
                raise ValueError(f"{path} is not a readable model file: neither smoothsk's "
                                 "format nor a pickle.")
        raise ValueError(
            f"{path} is a pickle (a joblib or pickle file: a scikit-learn model, say, or a "
            "smoothsk model saved before smoothsk 0.2), not a safe smoothsk model file, and "
            "loading a pickle can run arbitrary code. If you trust its origin, load it with "
            "--trust-pickle (Python: load_model(path, trusted=True)); a smoothsk model can "
            "then be saved again in the safe format with save_model."
        )
    return _load_archive(_read_archive(path), path)


def _load_archive(archive, path: Path):
    if not isinstance(archive, dict) or not isinstance(archive.get("document"), str):
        raise ValueError(f"{path} is not a smoothsk model file.")
    try:
        document = json.loads(archive["document"])
    except (TypeError, ValueError, RecursionError) as exc:  # nested beyond any real file
        raise ValueError(f"{path} has a corrupt model document "
                         f"({type(exc).__name__}).") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a smoothsk model file.")
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} is format version {document.get('format_version')!r} (written by smoothsk "
            f"{document.get('smoothsk_version')!r}); this smoothsk reads version "
            f"{FORMAT_VERSION}. Load it with the smoothsk version that wrote it, or retrain."
        )
    models = archive.get("models", {})
    if not isinstance(models, dict):
        raise ValueError(f"{path} has a corrupt list of nested models.")
    return _rebuild(document, archive.get("state_dict"), models, path)


def _checked_params(params, allowed: dict[str, type], path: Path) -> dict:
    """The document's parameters decoded, each checked by :func:`check_stored_param`."""
    if not isinstance(params, dict):
        raise ValueError(f"{path} has a corrupt parameter table.")
    decoded = {}
    for name, value in params.items():
        reason = check_stored_param(name, value)
        if reason is None:
            decoded[name] = decode_param(value, allowed)
            kind = CLASS_PARAMS.get(name)
            if isinstance(decoded[name], type) and not issubclass(decoded[name], kind):
                reason = f"{name} takes a {kind.__name__} class"
        if reason is not None:
            raise ValueError(
                f"{path} sets {name}={_shorten(value)}, which a model file may not choose: "
                f"{reason}. Nothing from the file was run; load only files saved by "
                "save_model from a source you trust.")
    return decoded


def _shorten(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _rebuild(document: dict, state: dict, models: dict, path: Path):
    from smoothsk.base import SmoothedClassifier

    allowed = _allowed_classes()
    params = _checked_params(document.get("params"), allowed, path)  # the trust boundary first
    recorded = document.get("weights_sha256")  # files written before this check have none
    if recorded is not None:
        try:
            actual = weights_digest(state) if isinstance(state, dict) else None
        except TypeError:
            actual = None
        if actual != recorded:
            raise ValueError(
                f"{path} is damaged: its weights differ from the digest recorded when it was "
                "saved (a corrupted copy or download). Copy the file again from its source, "
                "or retrain.")
    try:
        cls = decode_param({"class": document["estimator"]}, allowed)
        if not issubclass(cls, SmoothedClassifier):
            raise TypeError(f"{document['estimator']!r} is not a smoothsk estimator")
        fitted = document["fitted"]
        for name, value in params.items():  # a nested model: {"model": key in models}
            if isinstance(value, dict) and set(value) == {"model"}:
                params[name] = _nested(models, value["model"], path)
            elif name == "estimators":  # an ensemble's members: [(name, {"model": key})]
                params[name] = [(member, _nested(models, ref["model"], path))
                                for member, ref in value]
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{path} does not describe a loadable estimator ({exc}).") from exc
    try:
        estimator = cls(**params)
        estimator.classes_fitted_ = np.asarray(decode_param(fitted["classes"], allowed))
        estimator.input_shape_ = tuple(fitted["input_shape"])
        estimator.n_features_in_ = fitted["n_features_in"]
        if "sigma_" in fitted:
            estimator.sigma_ = fitted["sigma_"]
        # files before 0.2 do not record it: they were saved at the σ they were trained at
        estimator.trained_sigma_ = float(fitted.get("trained_sigma", estimator.noise_level))
        if estimator.module is None and not hasattr(estimator, "classifier"):
            # files written before images got LeNet by default hold an MLP
            estimator.default_network_ = fitted.get("default_network", "MLP")
        estimator.initialize()
        estimator.module_.load_state_dict(state)
    except (TypeError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path} does not describe a loadable estimator ({exc}).") from exc
    if isinstance(document.get("training_info"), dict):  # anything else is not ours
        estimator.training_info_ = document["training_info"]
    estimator.smoothsk_version_ = document.get("smoothsk_version")
    return estimator


def _nested(models: dict, key, path: Path):
    if not isinstance(key, str) or key not in models:
        raise KeyError(f"nested model {key!r}")
    return _load_archive(models[key], path)


def load_classifier(path, *, trusted: bool = False):
    """A fitted classifier to smooth, from a file: what the CLI's ``--classifier`` reads.

    A smoothsk model file (safe, as :func:`load_model`); with ``trusted=True`` also a
    joblib or pickle file holding any fitted scikit-learn classifier, ``Pipeline`` or
    skorch net (unpickling runs whatever code the file names: only for files you trust).
    Smooth the result with :class:`~smoothsk.PretrainedSmoothingClassifier` or
    :class:`~smoothsk.DenoisedSmoothingClassifier`.

    Parameters
    ----------
    path : str or Path
        A smoothsk model file, or with ``trusted`` a joblib/pickle file.
    trusted : bool, default=False
        Also read pickles (which can run code): only files from a source you trust.
    """
    from smoothsk.base import is_fitted_model

    path = Path(path)
    if not path.is_file() or zipfile.is_zipfile(path) or not trusted:
        return load_model(path, trusted=trusted)
    model = _load_pickle(path)
    if not (hasattr(model, "predict") and hasattr(model, "classes_")
            and is_fitted_model(model)):
        raise ValueError(f"{path} does not hold a fitted classifier (it holds a "
                         f"{type(model).__name__}); save one fitted with joblib.dump.")
    return model


def _smoothsk_estimator(model, path: Path):
    from smoothsk.base import SmoothedClassifier

    if not isinstance(model, SmoothedClassifier) or not hasattr(model, "module_"):
        raise ValueError(f"{path} does not hold a fitted smoothsk estimator "
                         f"(it holds a {type(model).__name__}).")
    return model


def _load_pickle(path: Path):
    import pickle

    import joblib

    try:
        return joblib.load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, OSError, IndexError,
            AttributeError, ModuleNotFoundError, TypeError) as exc:
        raise ValueError(f"{path} is not a readable model file ({type(exc).__name__}: "
                         f"{exc}).") from exc
