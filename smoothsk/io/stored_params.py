"""What a model file's document may hold: the allow-list of parameter *values*.

A parameter is stored, and read back, only when :func:`check_stored_param` allows its
value: a class only where the estimator takes one and only of that kind, ``torch.compile``
as on/off with a mode and backend from fixed sets (never inductor options, which name
compiler commands and output directories), no callbacks' arguments, no ``torch_load_kwargs``,
no DataLoader option that takes a function, a process start method or a device, and
devices as plain names.  :func:`encode_param` and :func:`decode_param` turn values into
the document's JSON form and back.  :mod:`smoothsk.io.model_file` applies the rules on
save and on load.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["CLASS_PARAMS", "NOT_SAVED", "check_stored_param", "decode_param", "encode_param",
           "is_saved"]

# Parameters that are never saved: training-time objects, not part of the smoothed model.
NOT_SAVED = {"callbacks", "teacher", "target_model", "surrogate"}
NOT_SAVED_PREFIXES = ("callbacks__",)  # arguments of the (unsaved) callbacks

# The parameters that may hold a class, and the kind of class each takes; a class
# anywhere else (a DataLoader's collate_fn, a network argument) is refused.
CLASS_PARAMS = {
    "module": torch.nn.Module,
    "criterion": torch.nn.modules.loss._Loss,
    "optimizer": torch.optim.Optimizer,
    "iterator_train": torch.utils.data.DataLoader,
    "iterator_valid": torch.utils.data.DataLoader,
    "dataset": torch.utils.data.Dataset,
    "train_split": object,  # skorch's ValidSplit, the only splitter in the allow-list
}
# torch.compile: on/off, and only these arguments with these values.  Inductor's
# ``options`` are never accepted: keys such as ``cpp.cxx`` name the compiler command it
# runs and ``trace.debug_dir`` a directory it writes.
_COMPILE_ARGUMENTS = {
    "compile__mode": {"default", "reduce-overhead", "max-autotune",
                      "max-autotune-no-cudagraphs"},
    "compile__backend": {"inductor", "eager", "aot_eager"},
    "compile__fullgraph": {True, False},
    "compile__dynamic": {True, False, None},
}
# DataLoader options that take plain numbers or flags (not collate_fn, worker_init_fn,
# sampler, generator, multiprocessing_context or pin_memory_device).
_LOADER_OPTIONS = {"shuffle", "num_workers", "pin_memory", "drop_last", "timeout",
                   "prefetch_factor", "persistent_workers", "in_order"}
_DEVICE_TYPES = {"cpu", "cuda", "mps", "xpu"}


def check_stored_param(name: str, value) -> str | None:
    """Why a model file may not hold ``name=value`` (``None`` if it may).

    ``value`` is in the document's JSON form: plain values, lists, ``{"tuple": [...]}``,
    ``{"class": "module.Name"}`` and ``{"model": key}`` (a nested model).  The rules are
    the format's trust boundary (module docstring): a value is refused when it could
    choose code to run, a command, or a path, whatever the estimator would do with it.

    Parameters
    ----------
    name : str
        The estimator parameter, as ``get_params`` names it.
    value : object
        Its encoded value.

    Returns
    -------
    str or None
        The reason, in a few words, or ``None`` when the value is allowed.
    """
    if name == "callbacks" or name.startswith(NOT_SAVED_PREFIXES):
        return "callbacks and their arguments are training-time objects, never stored"
    if name == "torch_load_kwargs":
        return None if value is None else "it sets how torch unpickles files"
    if name == "compile":
        return None if isinstance(value, bool) else "compile is True or False"
    if name.startswith("compile__"):
        options = _COMPILE_ARGUMENTS.get(name)
        if options is None:
            return ("only compile__mode, compile__backend, compile__fullgraph and "
                    "compile__dynamic are stored (inductor options can name programs "
                    "and paths)")
        if not isinstance(value, (bool, str, type(None))) or value not in options:
            return f"{name} is one of {sorted(options, key=str)}"
        return None
    if name.startswith(("iterator_train__", "iterator_valid__")):
        if name.split("__", 1)[1] not in _LOADER_OPTIONS:
            return f"the DataLoader options stored are {sorted(_LOADER_OPTIONS)}"
        return None if _is_number_or_flag(value) else "it must be a number or a flag"
    if name.startswith("dataset__"):
        return "the dataset takes no stored arguments"
    if name == "device":
        return _check_device_name(value)
    if name == "predict_nonlinearity":
        return None if value in ("auto", None) else "it must be 'auto' or None"
    if isinstance(value, dict) and set(value) == {"class"}:
        if name not in CLASS_PARAMS:
            return "a class may only be given as " + ", ".join(sorted(CLASS_PARAMS))
        return None if isinstance(value["class"], str) else "a class is named by a string"
    if name == "estimators":  # an ensemble's members: [(name, nested model), ...]
        return None if _is_member_list(value) else (
            "the members are a list of (name, nested model) pairs")
    if isinstance(value, dict) and set(value) == {"model"}:
        return None if name == "classifier" else "only the classifier is a nested model"
    return None if _is_plain(value) else "it must be a plain value (number, string, list)"


def _is_member_list(value) -> bool:
    if not isinstance(value, list) or not value:
        return False
    for item in value:
        pair = item.get("tuple") if isinstance(item, dict) and set(item) == {"tuple"} else None
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                and isinstance(pair[1], dict) and set(pair[1]) == {"model"}
                and isinstance(pair[1]["model"], str)):
            return False
    return True


def _is_number_or_flag(value) -> bool:
    return value is None or isinstance(value, (bool, int, float))


def _is_plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, dict) and set(value) == {"tuple"}:
        value = value["tuple"]
    return isinstance(value, list) and all(_is_plain(v) for v in value)


def _check_device_name(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 32:
        return "a device is a name such as 'cpu' or 'cuda:0'"
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        return "a device is a name such as 'cpu' or 'cuda:0'"
    if device.type not in _DEVICE_TYPES:
        return f"the device is one of the types {sorted(_DEVICE_TYPES)}"
    return None


def is_saved(name: str) -> bool:
    """Whether parameter ``name`` is stored at all (training-time objects are not).

    Parameters
    ----------
    name : str
        The parameter.
    """
    return name not in NOT_SAVED and not name.startswith(NOT_SAVED_PREFIXES)


def encode_param(name: str, value, allowed_names: dict[type, str]):
    """``value`` in the document's JSON form; classes must be in ``allowed_names``
    (class → qualified name), anything else not plain is refused.

    Parameters
    ----------
    name : str
        The parameter (for the message).
    value : object
        Its value.
    allowed_names : dict
        Class → qualified name, for the classes a file may name.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, tuple):
        return {"tuple": [encode_param(name, v, allowed_names) for v in value]}
    if isinstance(value, (list, np.ndarray)):
        return [encode_param(name, v, allowed_names) for v in list(value)]
    if isinstance(value, type) and value in allowed_names:
        return {"class": allowed_names[value]}
    raise ValueError(
        f"Parameter {name}={value!r} cannot be stored in a safe model file. Networks must "
        "be given as a class (module=MyNet with module__* arguments) registered with "
        "smoothsk.io.model_file.register_network; other parameters must be plain values."
    )


def decode_param(value, allowed: dict[str, type]):
    """A document value back as Python: ``{"tuple": ...}`` a tuple, ``{"class": name}``
    the class of that name in ``allowed``; an unknown class is refused.

    Parameters
    ----------
    value : object
        A document value.
    allowed : dict
        Qualified name → class.
    """
    if isinstance(value, list):
        return [decode_param(v, allowed) for v in value]
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(decode_param(v, allowed) for v in value["tuple"])
    if isinstance(value, dict) and set(value) == {"class"}:
        if value["class"] not in allowed:
            raise ValueError(
                f"The model file names class {value['class']!r}, which is not allowed. If it "
                "is your network, import it and call smoothsk.io.model_file.register_network "
                "on it before loading."
            )
        return allowed[value["class"]]
    return value
