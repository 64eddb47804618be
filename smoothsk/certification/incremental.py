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

Recorded votes.  :func:`record_votes` evaluates ``f`` once on the ``n_ζ`` disagreement
draws of every input it certified and keeps its class per draw; ``certify_incremental``
given those votes instead of ``f`` runs only ``f'`` on the same draws (the same seeds) and
compares.  The counts, and so the certificate, are the ones ``f`` itself would give, so
the argument above is unchanged; each further copy costs ``n_ζ`` forward passes of the
copy alone instead of ``2 n_ζ``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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

__all__ = ["DisagreementNetwork", "RecordedVotes", "certify_incremental", "record_votes"]

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


class _VoteRecorder(torch.nn.Module):
    """The network itself, keeping the class of every row it is given, in order."""

    def __init__(self, network: torch.nn.Module, precision: str):
        super().__init__()
        self.network, self.precision, self.votes = network, precision, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with precision_context(self.precision, x.device):
            logits = self.network(x.to(inputs.module_device_dtype(self.network)[1]))
        self.votes.append(logits.argmax(1).cpu())
        return logits.float()


class _ReplayedDisagreement(DisagreementNetwork):
    """:class:`DisagreementNetwork` with the original's classes read from a recording.

    ``sample_counts`` hands the network each active input's draws in order, input by
    input (its contract), so row ``k`` of the replay is row ``k`` of the recording of
    the same inputs.
    """

    def __init__(self, recorded: np.ndarray, modified: torch.nn.Module,
                 modified_precision: str):
        super().__init__(modified, modified, modified_precision)
        self.recorded = torch.from_numpy(recorded.astype(np.int64))
        self.read = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.recorded[self.read : self.read + len(x)].to(x.device)
        self.read += len(x)
        if len(expected) != len(x):
            raise RuntimeError("more draws replayed than were recorded")
        differ = expected != self._run(self.modified, x, self.modified_precision)
        return torch.stack([(~differ).float(), differ.float()], dim=1)


@dataclass
class RecordedVotes:
    """The original network's class on each of its inputs' disagreement draws
    (:func:`record_votes`), for certifying any number of modified copies with
    :func:`certify_incremental` without evaluating the original again.

    Attributes
    ----------
    classes : ndarray of int, shape (N, n_zeta)
        The original's class on draw ``j`` of input ``i``; −1 for inputs its certificate
        abstained on (never compared).
    seed : int
        The base seed of the draws (:func:`smoothsk.certify`'s ``random_state``).
    indices : ndarray of int, shape (N,)
        The inputs' global indices (``index_offset``), which seed their noise.
    sigma : float
        The noise level.
    precision : str
        The arithmetic the original ran at (its certificate's).
    certificate_digest : str
        Fingerprint of the certificate the votes belong to (its counts and σ).
    network_classes : ndarray or None
        The original's class labels, for the copies' certificates.
    """

    classes: np.ndarray
    seed: int
    indices: np.ndarray
    sigma: float
    precision: str
    certificate_digest: str
    network_classes: np.ndarray | None = None

    @property
    def n_zeta(self) -> int:
        """Draws recorded per input."""
        return self.classes.shape[1]

    def __len__(self) -> int:
        return len(self.classes)


def _certificate_digest(certificate: Certificate) -> str:
    digest = hashlib.sha256()
    for array in (certificate.prediction, certificate.selection_counts, certificate.counts):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    digest.update(repr((certificate.sigma, certificate.n0, certificate.n, certificate.alpha,
                        certificate.precision)).encode())
    return digest.hexdigest()


def _check_plain_certificate(certificate: Certificate, X) -> None:
    if len(certificate) != len(X):
        raise ValueError(f"the certificate holds {len(certificate)} inputs but X has {len(X)}.")
    if certificate.sequential or certificate.bound != "binary" or \
            certificate.interval != "clopper-pearson" or certificate.noise != "gaussian":
        raise ValueError("certify_incremental builds on a plain CERTIFY certificate (binary "
                         "bound, Clopper–Pearson, Gaussian noise, not sequential).")


def record_votes(original, X, certificate: Certificate, *, n_zeta: int = 10_000,
                 batch_size: int = 1000, random_state=None,
                 index_offset: int = 0) -> RecordedVotes:
    """The original's class on the disagreement draws of every input it certified.

    :func:`certify_incremental` given the result in place of ``original`` evaluates only
    the modified network on those draws and returns exactly the certificate it would
    return given ``original`` with the same ``n_zeta``, ``random_state`` and
    ``index_offset``; the original's half of the work is paid once for all copies.

    Parameters
    ----------
    original : torch.nn.Module or fitted classifier
        The certified network ``f``.
    X : array or tensor
        The inputs ``certificate`` was computed on, in its order.
    certificate : Certificate
        ``certify(original, X, sigma, ...)``'s result.
    n_zeta : int
        Draws per input (the copies' ``n_zeta``).
    batch_size : int
        Noisy inputs per forward pass (changes no vote).
    random_state : int, RandomState or None
        Seeds the draws; recorded, so the copies use the same ones.
    index_offset : int or array of int
        As in :func:`smoothsk.certify`.

    Returns
    -------
    RecordedVotes
        ``N × n_zeta`` classes (int16 for networks of fewer than 32,768 classes).
    """
    network, classes = as_base_network(original)
    n_zeta = inputs.check_positive_int(n_zeta, "n_zeta")
    _check_plain_certificate(certificate, X)
    seed = inputs.base_seed(random_state)
    compared = certificate.prediction != ABSTAIN
    recorder = _VoteRecorder(network, certificate.precision)
    (counts,) = sample_counts(recorder, X, certificate.sigma, [n_zeta], batch_size=batch_size,
                              random_state=seed, index_offset=index_offset,
                              streams=[STREAM_INCREMENTAL], active=compared)
    width = counts.shape[1] if counts.size else 0
    votes = np.full((len(X), n_zeta), ABSTAIN,
                    dtype=np.int16 if width < 2**15 else np.int32)
    if recorder.votes:
        votes[compared] = torch.cat(recorder.votes).numpy().reshape(-1, n_zeta)
    return RecordedVotes(
        classes=votes, seed=seed,
        indices=inputs.global_indices(index_offset, len(X)), sigma=certificate.sigma,
        precision=certificate.precision, certificate_digest=_certificate_digest(certificate),
        network_classes=classes if classes is not None else certificate.classes)


def _check_votes(votes: RecordedVotes, certificate: Certificate, X, n_zeta, random_state,
                 index_offset) -> tuple[int, int]:
    """``(n_zeta, seed)`` of ``votes``, refusing anything that would replay other draws."""
    if votes.certificate_digest != _certificate_digest(certificate) or len(votes) != len(X):
        raise ValueError("These recorded votes belong to another certificate; record them "
                         "with record_votes(original, X, certificate) for this one.")
    if n_zeta is not None and n_zeta != votes.n_zeta:
        raise ValueError(f"n_zeta={n_zeta} but the votes were recorded on {votes.n_zeta} "
                         "draws per input; leave n_zeta out or record again.")
    if random_state is not None and inputs.base_seed(random_state) != votes.seed:
        raise ValueError(f"random_state gives other draws than the recorded votes' (seed "
                         f"{votes.seed}); leave random_state out to use theirs.")
    if not np.array_equal(inputs.global_indices(index_offset, len(X)), votes.indices):
        raise ValueError("index_offset gives the inputs other indices (other draws) than "
                         "the recorded votes'; pass the index_offset they were recorded with.")
    return votes.n_zeta, votes.seed


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
    n_zeta: int | None = None,
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
    modified : torch.nn.Module or fitted classifier
        ``f'`` (a network, or an estimator whose network is used).
    original : torch.nn.Module, fitted classifier or RecordedVotes
        ``f``, or its :func:`record_votes` on ``X`` for this certificate: then only
        ``modified`` is evaluated, on the recorded draws, and ``n_zeta``, ``random_state``
        and ``index_offset`` default to (and must equal) the recording's.
    X : array or tensor
        The inputs ``certificate`` was computed on, in its order.
    certificate : Certificate
        ``certify(original, X, sigma, ...)``'s result (σ, ``n`` and α are taken from it).
    n_zeta : int or None
        Draws on which both networks are compared (``f`` and ``f'`` each evaluate them);
        None: 10,000, or the recorded votes' count.
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
    alpha_zeta = bounds.check_alpha(alpha_zeta)
    check_precision(modified_precision)
    _check_plain_certificate(certificate, X)
    if isinstance(original, RecordedVotes):
        n_zeta, random_state = _check_votes(original, certificate, X, n_zeta, random_state,
                                            index_offset)
        classes = original.network_classes
    else:
        original_net, classes = as_base_network(original)
        n_zeta = inputs.check_positive_int(10_000 if n_zeta is None else n_zeta, "n_zeta")
        random_state = inputs.base_seed(random_state)  # one seed for draws and fallback
    alpha = certificate.alpha + alpha_zeta
    if alpha >= 1:
        raise ValueError(f"alpha + alpha_zeta = {alpha} must stay below 1.")
    sigma = certificate.sigma
    # The path is chosen from the original certificate alone (module docstring).
    zeta_floor = bounds.upper_confidence_bound(0, n_zeta, alpha_zeta)
    cheap = (certificate.prediction != ABSTAIN) & (certificate.pa_lower - zeta_floor > 0.5)
    if recertify_above is not None:
        cheap &= certificate.pa_lower < recertify_above
    if isinstance(original, RecordedVotes):
        pair = _ReplayedDisagreement(original.classes[cheap].ravel(), modified_net,
                                     modified_precision)
    else:
        pair = DisagreementNetwork(original_net, modified_net, modified_precision,
                                   certificate.precision)
    (counts,) = sample_counts(pair, X, sigma, [n_zeta], batch_size=batch_size,
                              random_state=random_state, index_offset=index_offset,
                              streams=[STREAM_INCREMENTAL], active=cheap)
    if isinstance(pair, _ReplayedDisagreement) and pair.read != len(pair.recorded):
        raise RuntimeError("fewer draws replayed than were recorded")
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
