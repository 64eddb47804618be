"""What scikit-learn's estimator checks expect of smoothsk estimators.

Every smoothsk estimator passes ``sklearn.utils.estimator_checks.parametrize_with_checks``
except the checks below, each for a stated reason.  Use them in your own tests of a
custom subclass::

    @parametrize_with_checks([MyClassifier(**tiny_estimator_params())],
                             expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
    def test_sklearn_compatible(estimator, check):
        check(estimator)
"""

from __future__ import annotations

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
    """
    params = dict(
        sigma=0.1, max_epochs=3, lr_schedule="constant", input_range=None,
        optimizer=torch.optim.SGD, lr=0.1, batch_size=32, n0=8, n=32, n_predict=32,
        certify_batch_size=512, module__hidden_units=(16,), random_state=0,
    )
    params.update(overrides)
    return params
