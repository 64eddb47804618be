"""The certification core: bounds, sampling, CERTIFY/PREDICT, the adaptive test, parallel runs.

Modules, each depending only on those before it: :mod:`~smoothsk.certify.bounds`
(Clopper–Pearson), :mod:`~smoothsk.certify.sampling` (the base network's votes on
noisy copies), :mod:`~smoothsk.certify.parallel` (chunks of inputs over joblib),
:mod:`~smoothsk.certify.core` (CERTIFY and PREDICT) and
:mod:`~smoothsk.certify.adaptive` (the fixed-radius sequential test).  Import names
from the submodules (``from smoothsk.certify.core import certify``) or from
:mod:`smoothsk`, where ``smoothsk.certify`` is the function.
"""
