"""Helpers for testing smoothsk estimators, and what scikit-learn's checks expect of them.

Every smoothsk estimator passes ``sklearn.utils.estimator_checks.parametrize_with_checks``
except the checks below, each for a stated reason.  Use them in your own tests of a
custom subclass::

    @parametrize_with_checks([MyClassifier(**tiny_estimator_params())],
                             expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
    def test_sklearn_compatible(estimator, check):
        check(estimator)

:func:`process_group_members` lists the live processes of a process group, for tests
that a killed run leaves no worker behind.
"""

from __future__ import annotations

from pathlib import Path

import torch

EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_no_attributes_set_in_init": (
        "skorch's NeuralNet.__init__ sets history_, initialized_ and virtual_params_ and "
        "stores prefixed arguments (module__*, iterator_train__shuffle) as attributes; "
        "this is how skorch routes parameters and does not affect clone or get_params."
    ),
    "check_methods_sample_order_invariance": (
        "The Monte Carlo noise of input i is keyed to (random_state, i) so that chunked, "
        "resumed and distributed certification reproduce a single run exactly; permuting "
        "the rows therefore gives each input other draws (an equally valid estimate)."
    ),
    "check_methods_subset_invariance": (
        "Same reason as check_methods_sample_order_invariance: a subset moves inputs to "
        "other indices, hence other noise draws (pass index_offset to reproduce a run)."
    ),
}


def tiny_estimator_params(**overrides) -> dict:
    """Small, fast settings for running the scikit-learn checks on an estimator.

    Three epochs of SGD at a constant learning rate: the checks want a classifier that
    fits simple data quickly, not an annealed one.  ``input_range=None``: the checks feed
    arbitrary real data, where a smoothsk estimator otherwise refuses values outside
    [0, 1].

    Parameters
    ----------
    **overrides
        Settings that replace or add to the small ones (``sigma=None``, ...).
    """
    params = dict(
        sigma=0.1, max_epochs=3, lr_schedule="constant", input_range=None,
        optimizer=torch.optim.SGD, lr=0.1, batch_size=32, n0=8, n=32, n_predict=32,
        certify_batch_size=512, module__hidden_units=(16,), random_state=0,
    )
    params.update(overrides)
    return params


def process_group_members(pgid: int) -> list[int]:
    """The PIDs of the live (not zombie) processes of process group ``pgid``.

    Read from ``/proc/<pid>/stat`` (Linux); processes that exit while it reads are
    skipped.

    Parameters
    ----------
    pgid : int
        The process group (``os.getpgid`` of its leader).
    """
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # the command name may hold spaces and parentheses: fields after the last ")"
                state, _, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(group) == pgid and state != "Z":
                members.append(int(entry.name))
    return members
