"""The certification core: bounds, sampling, CERTIFY/PREDICT, the adaptive test, parallel runs.

Modules, each depending only on those before it: :mod:`~smoothsk.certification.bounds`
(Clopper–Pearson), :mod:`~smoothsk.certification.sampling` (the base network's votes on
noisy copies), :mod:`~smoothsk.certification.parallel` (chunks of inputs over joblib),
:mod:`~smoothsk.certification.core` (CERTIFY and PREDICT) and
:mod:`~smoothsk.certification.adaptive` (the fixed-radius sequential test).  Import names
from the submodules (``from smoothsk.certification.core import certify``) or from
:mod:`smoothsk`, where ``smoothsk.certify`` is the CERTIFY function (the subpackage has
its own name so that both can be imported: before 0.2 it was ``smoothsk.certify``, and
``import smoothsk.certify.core`` failed because the function shadowed it).
"""
