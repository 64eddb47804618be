"""The certification core: bounds, noise, sampling, CERTIFY/PREDICT, the sequential tests.

Modules, each depending only on those before it (docs/architecture.md):
:mod:`~smoothsk.certification.bounds` (Clopper–Pearson), :mod:`~smoothsk.certification.noise`
(the lattice Gaussian), :mod:`~smoothsk.certification.inputs`,
:mod:`~smoothsk.certification.precision` and :mod:`~smoothsk.certification.heap` (what the
sampling loop is given and runs under), :mod:`~smoothsk.certification.sampling` (the one
sampling loop: the base network's votes on noisy copies),
:mod:`~smoothsk.certification.parallel` (chunks of inputs over joblib),
:mod:`~smoothsk.certification.radius` (counts to radii),
:mod:`~smoothsk.certification.certificate` (what CERTIFY returns),
:mod:`~smoothsk.certification.core` (CERTIFY and PREDICT), then the sequential tests
(:mod:`~smoothsk.certification.sequential`, :mod:`~smoothsk.certification.adaptive`,
:mod:`~smoothsk.certification.radii`) and :mod:`~smoothsk.certification.incremental`.
Import names from the submodules (``from smoothsk.certification.core import certify``) or
from :mod:`smoothsk`, where ``smoothsk.certify`` is the CERTIFY function (the subpackage
has its own name so that both can be imported: before 0.2 it was ``smoothsk.certify``, and
``import smoothsk.certify.core`` failed because the function shadowed it).
"""
