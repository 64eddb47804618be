"""Incremental certification: certificates for a modified network from the original's.

Ugare, Banerjee, Misailovic & Singh, "Incremental Randomized Smoothing Certification"
(ICLR 2024; code uiuc-arc/Incremental-DNN-Verification).  A network ``f`` certified once,
then quantized, pruned or fine-tuned into ``f'``, is certified again without ``n`` fresh
draws: on ``n_ζ`` draws both networks see, count where they disagree, bound the
disagreement rate ``ζ = P(f(x + δ) ≠ f'(x + δ))`` from above by Clopper–Pearson, and certify
``f'`` from ``p̲_A(f) − ζ̄``.

Soundness.  For the class ``c`` certified for ``f``, every draw where ``f`` votes ``c``
and ``f'`` agrees is a vote of ``f'`` for ``c``, so ``p_c(f') ≥ p_c(f) − ζ``.  The original
certificate's ``p̲_A ≤ p_c(f)`` fails with probability at most its α; ``ζ̄ ≥ ζ`` fails
with probability at most ``α_ζ`` (fresh draws, a fixed ``n_ζ``).  Both hold with
probability at least ``1 − α − α_ζ``, and then ``p_c(f') ≥ p̲_A − ζ̄``: the certificate of
``f'`` at radius ``σ Φ⁻¹(p̲_A − ζ̄)`` holds at level ``α + α_ζ`` (recorded as its
``alpha``).

Which inputs take that path is decided from the original certificate alone: those whose
``p̲_A`` minus the bound of zero disagreements, ``ζ̄₀ = 1 − α_ζ^{1/n_ζ}``, is still above
1/2, and below ``recertify_above`` (Ugare et al.'s γ: there the bound costs the most
radius).  The others are certified by plain CERTIFY of ``f'`` on fresh draws at level
``α_ζ``.  Given the original's draws ``D`` the choice is fixed, so an input's failure
probability is at most ``1{p̲_A fails} + α_ζ`` on the cheap path and ``α_ζ`` on the
other; averaged over ``D`` it is at most ``α + α_ζ`` either way.  (A choice that looked at
the disagreement draws, or a fallback at ``α + α_ζ`` or on the original's draws, would
need a union bound over both certificates: up to ``2α + 2α_ζ``.)
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm

from smoothsk.certification import bounds, inputs
from smoothsk.certification.adapters import as_base_network
from smoothsk.certification.certificate import ABSTAIN, Certificate
from smoothsk.certification.core import certify
from smoothsk.certification.precision import check_precision, precision_context
from smoothsk.certification.sampling import sample_counts
from smoothsk.validation import Float, check_parameters

__all__ = ["DisagreementNetwork", "certify_incremental"]

STREAM_INCREMENTAL = 6


class DisagreementNetwork(torch.nn.Module):
    """Two logits per row: class 1 where ``argmax original(x) != argmax modified(x)``.

    ``modified_precision`` runs the modified network under autocast at that precision
    (its quantized arithmetic) while the original runs as it was certified.

    Parameters
    ----------
    original, modified : torch.nn.Module
        ``f`` and ``f'``, returning logits.
    modified_precision, original_precision : {"fp32", "bf16", "fp16"}, default="fp32"
        The arithmetic each runs at.
    """

    def __init__(self, original: torch.nn.Module, modified: torch.nn.Module,
                 modified_precision: str = "fp32", original_precision: str = "fp32"):
        super().__init__()
        self.original, self.modified = original, modified
        self.modified_precision = modified_precision
        self.original_precision = original_precision

    def _run(self, network, x, precision):
        with precision_context(precision, x.device):  # fp32: no autocast
            return network(x.to(inputs.module_device_dtype(network)[1])).argmax(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        differ = self._run(self.original, x, self.original_precision) != \
            self._run(self.modified, x, self.modified_precision)
        return torch.stack([(~differ).float(), differ.float()], dim=1)


def _fresh_seed(random_state) -> int:
    """A seed whose noise is independent of ``random_state``'s: the fallback's CERTIFY
    must not reuse the draws of the original certificate, which chose the path."""
    sequence = np.random.SeedSequence([inputs.base_seed(random_state), STREAM_INCREMENTAL])
    return int(sequence.generate_state(1)[0] >> np.uint32(1))


def certify_incremental(
    modified,
    original,
    X,
    certificate: Certificate,
    *,
    n_zeta: int = 10_000,
    alpha_zeta: float = 0.001,
    modified_precision: str = "fp32",
    recertify_above: float | None = 0.99,
    batch_size: int = 1000,
    random_state=None,
    index_offset: int = 0,
) -> Certificate:
    """Certify ``modified`` on ``X`` from the ``certificate`` of ``original`` (module docstring).

    Parameters
    ----------
    modified, original : torch.nn.Module or fitted classifier
        ``f'`` and ``f`` (networks, or estimators whose networks are used).
    X : array or tensor
        The inputs ``certificate`` was computed on, in its order.
    certificate : Certificate
        ``certify(original, X, sigma, ...)``'s result (σ, ``n`` and α are taken from it).
    n_zeta : int
        Draws on which both networks are compared (``f`` and ``f'`` each evaluate them).
    alpha_zeta : float
        Failure probability of the disagreement bound; the result holds at
        ``certificate.alpha + alpha_zeta``.
    modified_precision : {"fp32", "bf16", "fp16"}
        Arithmetic of ``modified`` (a bf16 copy of ``original`` is ``modified=original``
        with ``"bf16"``); ``original`` runs at the certificate's precision.
    recertify_above : float or None
        Inputs whose original ``p̲_A`` is at least this are certified from scratch
        (plain CERTIFY of ``modified``, fresh draws, level ``alpha_zeta``), where the
        disagreement bound would cap their radius most: 0.99 is the authors' γ for
        CIFAR-10 (0.995 for ImageNet); None keeps the cheap path for every input it
        can certify.
    batch_size, random_state, index_offset
        As in :func:`smoothsk.certify` (the disagreement draws are a stream of their own).

    Returns
    -------
    Certificate
        Of ``modified``, at level ``certificate.alpha + alpha_zeta``; ``samples`` holds the
        draws each input cost ``modified`` (``n_zeta``, or the fallback's ``n0 + n``) and
        ``disagreements`` the draws on which the two networks differed (0 where they
        were not compared).
    """
    check_parameters({"recertify_above": [Float(0.5, 1, closed="right"), None]},
                     {"recertify_above": recertify_above}, "certify_incremental")
    modified_net, _ = as_base_network(modified)
    original_net, classes = as_base_network(original)
    n_zeta = inputs.check_positive_int(n_zeta, "n_zeta")
    alpha_zeta = bounds.check_alpha(alpha_zeta)
    check_precision(modified_precision)
    if len(certificate) != len(X):
        raise ValueError(f"the certificate holds {len(certificate)} inputs but X has {len(X)}.")
    if certificate.sequential or certificate.bound != "binary" or \
            certificate.interval != "clopper-pearson" or certificate.noise != "gaussian":
        raise ValueError("certify_incremental builds on a plain CERTIFY certificate (binary "
                         "bound, Clopper–Pearson, Gaussian noise, not sequential).")
    alpha = certificate.alpha + alpha_zeta
    if alpha >= 1:
        raise ValueError(f"alpha + alpha_zeta = {alpha} must stay below 1.")
    sigma = certificate.sigma
    pair = DisagreementNetwork(original_net, modified_net, modified_precision,
                               certificate.precision)
    # The path is chosen from the original certificate alone (module docstring).
    zeta_floor = bounds.upper_confidence_bound(0, n_zeta, alpha_zeta)
    cheap = (certificate.prediction != ABSTAIN) & (certificate.pa_lower - zeta_floor > 0.5)
    if recertify_above is not None:
        cheap &= certificate.pa_lower < recertify_above
    (counts,) = sample_counts(pair, X, sigma, [n_zeta], batch_size=batch_size,
                              random_state=random_state, index_offset=index_offset,
                              streams=[STREAM_INCREMENTAL], active=cheap)
    disagreements = (counts[:, 1] if counts.shape[1] > 1 else
                     np.zeros(len(X))).astype(np.int64)
    zeta_upper = np.where(cheap, bounds.upper_confidence_bound(disagreements, n_zeta,
                                                               alpha_zeta), 1.0)
    pa_lower = np.where(cheap, certificate.pa_lower - zeta_upper, 0.0)
    certified = pa_lower > 0.5
    radius = np.where(certified, sigma * norm.ppf(np.clip(pa_lower, 0.5, 1.0)), 0.0)
    prediction = np.where(certified, certificate.prediction, ABSTAIN)
    samples = np.where(cheap, n_zeta, 0).astype(np.int64)
    fallback = np.flatnonzero(~cheap)
    if len(fallback):
        offsets = inputs.global_indices(index_offset, len(X))[fallback]
        plain = certify(modified_net, inputs.take_rows(X, fallback), sigma,
                        n0=certificate.n0, n=certificate.n, alpha=alpha_zeta,
                        batch_size=batch_size, random_state=_fresh_seed(random_state),
                        index_offset=offsets, precision=modified_precision)
        prediction[fallback], radius[fallback] = plain.prediction, plain.radius
        pa_lower[fallback] = plain.pa_lower
        samples[fallback] += certificate.n0 + certificate.n
    return Certificate(
        prediction=prediction, radius=radius, pa_lower=pa_lower,
        selection_counts=certificate.selection_counts, counts=certificate.counts,
        sigma=sigma, n0=certificate.n0, n=certificate.n, alpha=alpha,
        classes=classes if classes is not None else certificate.classes,
        precision=modified_precision, samples=samples, disagreements=disagreements,
    )
