"""The smoothed classifier of a fitted estimator: prediction and certification.

:class:`SmoothedPredictionMixin` gives every smoothsk estimator the smoothed
``predict`` / ``predict_proba`` / ``score``, Cohen et al.'s PREDICT
(``predict_or_abstain``) and CERTIFY (``certify``), and the sequential certifications
(``certify_radius``, ``certify_radii``), each a thin call of
:mod:`smoothsk.certification` on the fitted network with the estimator's σ, noise,
precision and seed; results are mapped to the estimator's labels.
"""

from __future__ import annotations

import contextlib

import numpy as np
from sklearn.utils.validation import check_is_fitted, column_or_1d

from smoothsk.certification import core, incremental, sampling
from smoothsk.certification.adaptive import RadiusCertificate, certify_radius
from smoothsk.certification.bounds import check_alpha
from smoothsk.certification.certificate import Certificate, labels_or_marker
from smoothsk.certification.core import predict_from_counts
from smoothsk.certification.noise import noise_test_alpha
from smoothsk.certification.parallel import torch_threads
from smoothsk.certification.radii import DEFAULT_RADII_GROWTH, RadiiCertificate, certify_radii

__all__ = ["SmoothedPredictionMixin"]


class SmoothedPredictionMixin:
    """The smoothed ``g(x) = argmax_c P(f(x + δ) = c)`` of the fitted network ``module_``."""

    @property
    def noise_level(self) -> float:
        """The σ in use: ``sigma`` here; subclasses may resolve it in ``fit`` (CRT's
        teacher, an ensemble's members).  It exists before ``fit``, hence no trailing
        underscore."""
        return self.sigma

    @property
    def noise_level_(self) -> float:
        """The former name of :attr:`noise_level`, kept for code written against 0.2."""
        return self.noise_level

    def noise_options(self) -> dict:
        """The ``noise`` and ``noise_step`` every certification and prediction uses."""
        return {"noise": self.noise, "noise_step": self.noise_step}

    @contextlib.contextmanager
    def _progress(self, total: int, description: str):
        """A progress bar over inputs when ``verbose`` (tqdm, or log lines off a terminal)."""
        from smoothsk.progress import progress_bar

        bar = progress_bar(total, f"{type(self).__name__} {description}",
                           enabled=bool(self.verbose))
        try:
            yield bar
        finally:
            bar.close()

    def prepare_without_fit(self, X) -> None:
        """The hook of an estimator that is ready before ``fit`` (a prefit classifier):
        called with the inputs of the first ``predict`` or ``certify``; a no-op here.

        Parameters
        ----------
        X : array-like, tensor or Dataset
            The inputs of the call.
        """

    def check_fitted_inputs(self, X) -> np.ndarray:
        """``X`` checked for prediction or certification: the estimator is fitted (or
        ready without fit), its σ is the one it was trained at, and ``X`` has the fitted
        per-sample shape and lies in ``input_range``.  Returns the float32 array.

        Parameters
        ----------
        X : array-like, tensor or Dataset
            The inputs of the call.
        """
        self.prepare_without_fit(X)
        check_is_fitted(self, ["module_", "classes_fitted_"])
        self.check_device_available()
        self._check_sigma_unchanged()
        return self.check_inputs(X, reset=False)

    def _check_sigma_unchanged(self):
        trained = getattr(self, "trained_sigma_", None)
        if not self.sigma_fixed_by_training or trained is None:
            return
        if not np.isclose(float(self.noise_level), trained, rtol=1e-12, atol=0):
            raise ValueError(
                f"This {type(self).__name__} was trained at sigma={trained:g}, but its sigma "
                f"is now {self.noise_level:g} (set_params after fit): its certificates would "
                "describe a smoothed classifier its network was not trained for. Set sigma "
                f"back to {trained:g}, or fit again to train at the new sigma (to smooth a "
                "fitted classifier at any sigma, use PretrainedSmoothingClassifier).")

    def check_n_classes(self, n_outputs: int) -> None:
        """Refuse a network whose number of outputs is not the number of classes.

        Parameters
        ----------
        n_outputs : int
            The network's number of logits.
        """
        if n_outputs != len(self.classes_):
            raise ValueError(
                f"The network returns {n_outputs} logits but fit saw {len(self.classes_)} "
                "classes; set the network's number of outputs (e.g. module__num_classes)."
            )

    def _smoothed_counts(self, X) -> np.ndarray:
        X = self.check_fitted_inputs(X)
        with self._progress(len(X), "predict") as bar, torch_threads(self.n_threads):
            counts = sampling.class_counts(
                self.module_, X, self.noise_level, self.n_predict,
                batch_size=self.certify_batch_size, random_state=self.random_state,
                precision=self.precision, progress=bar.update, shared_noise=self.shared_noise,
                **self.noise_options(),
            )
        self.check_n_classes(counts.shape[1])
        return counts

    def predict_proba(self, X) -> np.ndarray:
        """Monte Carlo estimate of ``P(f(x + δ) = c)`` from ``n_predict`` draws per input.

        Columns follow ``classes_``; rows sum to 1.

        Parameters
        ----------
        X : array-like or torch Dataset
            Inputs, in the range and shape the estimator was fitted on.

        Returns
        -------
        ndarray of float, shape (N, n_classes)
        """
        return self._smoothed_counts(X) / self.n_predict

    def predict(self, X) -> np.ndarray:
        """The smoothed classifier's vote ``argmax_c P(f(x + δ) = c)``, as labels.

        Never abstains; :meth:`predict_or_abstain` adds Cohen's significance test.

        Parameters
        ----------
        X : array-like or torch Dataset
            Inputs, in the range and shape the estimator was fitted on.

        Returns
        -------
        ndarray, shape (N,)
            Labels from ``classes_``.
        """
        votes = self._smoothed_counts(X).argmax(axis=1)
        return self.classes_[votes]

    def score(self, X, y, sample_weight=None) -> float:
        """Accuracy of the smoothed classifier's vote (:meth:`predict`) on ``(X, y)``.

        As scikit-learn's ``ClassifierMixin.score``; labels the model cannot predict
        raise instead of counting as wrong.

        Parameters
        ----------
        X : array-like or torch Dataset
            Inputs.
        y : array-like
            Their true labels.
        sample_weight : array-like or None, default=None
            Weights of the inputs in the accuracy.
        """
        self.encode_labels(np.asarray(y))
        return super().score(X, y, sample_weight=sample_weight)

    def predict_or_abstain(self, X, *, abstain_label=None) -> np.ndarray:
        """Cohen et al.'s PREDICT with ``n_predict`` draws and failure probability ``alpha``.

        Returns labels from ``classes_`` with ``abstain_label`` where the two-sided
        binomial test between the top two classes is not significant at ``alpha``.
        The returned label differs from ``g(x)`` with probability at most ``alpha``.
        ``abstain_label=None`` uses :func:`smoothsk.certification.certificate.default_abstain_label`
        (−1 for integer labels, ``"abstain"`` for strings): a marker of the labels'
        dtype, which scikit-learn's metrics accept (abstentions count as wrong).

        Parameters
        ----------
        X : array-like or torch Dataset
            Inputs, in the range and shape the estimator was fitted on.
        abstain_label : object or None, default=None
            What abstentions are returned as (None: the marker above).
        """
        alpha = check_alpha(self.alpha)  # set_params may have changed it since fit
        counts = self._smoothed_counts(X)
        alpha = noise_test_alpha(alpha, self.n_predict, X, sigma=self.noise_level,
                                 **self.noise_options())
        index = predict_from_counts(counts, alpha)
        return labels_or_marker(self.classes_, index, abstain_label)

    def _defaults(self, **given) -> dict:
        """The estimator's ``n0``, ``n``, ``alpha``, ``certify_batch_size`` and
        ``random_state`` where a certification call passes None."""
        own = {"n0": self.n0, "n": self.n, "max_n": self.n, "alpha": self.alpha,
               "batch_size": self.certify_batch_size, "random_state": self.random_state}
        return {name: own[name] if value is None else value for name, value in given.items()}

    def _common_options(self, bar) -> dict:
        return {"precision": self.precision, "progress": bar.update,
                "shared_noise": self.shared_noise, **self.noise_options()}

    def certify(
        self, X, *, n0=None, n=None, alpha=None, batch_size=None, random_state=None,
        index_offset: int = 0, n_jobs: int | None = None, chunk_size: int | None = None,
        threads_per_worker: int | None = None, bound: str = "binary",
        interval: str = "clopper-pearson", sequential: bool = False,
        max_n: int | None = None, tolerance: float | None = None,
    ) -> Certificate:
        """Cohen et al.'s CERTIFY on every input (see :func:`smoothsk.certify`).

        Defaults come from the estimator's ``n0``, ``n``, ``alpha``,
        ``certify_batch_size`` and ``random_state``.  The result's ``labels()``
        maps class indices to ``classes_``; ``is_correct(y)`` compares with labels.
        ``n_jobs`` spreads the inputs over joblib workers (identical certificates).
        ``bound`` ("binary", "two-class") and ``interval`` ("clopper-pearson",
        "randomized") choose how the counts become a radius
        (:func:`smoothsk.certification.radius.certified_radius`).  ``sequential=True``
        (with ``max_n`` and ``tolerance``) is the anytime CERTIFY of
        :func:`smoothsk.certify`.

        Parameters
        ----------
        X : array-like or torch Dataset
            Inputs, in the range and shape the estimator was fitted on.
        n0, n, alpha, batch_size, random_state : optional
            None takes the estimator's ``n0``, ``n``, ``alpha``, ``certify_batch_size``
            and ``random_state``.
        index_offset, n_jobs, chunk_size, threads_per_worker, bound, interval
            As in :func:`smoothsk.certify`.
        sequential, max_n, tolerance
            The anytime CERTIFY, as in :func:`smoothsk.certify`.

        Returns
        -------
        Certificate
            With ``classes`` set to ``classes_``.
        """
        X = self.check_fitted_inputs(X)
        with self._progress(len(X), "certify") as bar, torch_threads(self.n_threads):
            result = core.certify(
                self.module_, X, self.noise_level,
                **self._defaults(n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                                 random_state=random_state),
                index_offset=index_offset, n_jobs=n_jobs, chunk_size=chunk_size,
                threads_per_worker=threads_per_worker, bound=bound, interval=interval,
                sequential=sequential, max_n=max_n, tolerance=tolerance,
                **self._common_options(bar),
            )
        self.check_n_classes(result.counts.shape[1])
        result.classes = self.classes_
        return result

    def _label_indices(self, X, y):
        """Labels ``y`` as class indices for the sequential certifications (None stays
        None; labels the model never saw are marked so they never match)."""
        if y is None:
            return None
        y = column_or_1d(y)
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} inputs but y has {len(y)} labels.")
        return self.encode_labels(y, unseen="mark")

    def certify_radius(
        self, X, radius: float, *, y=None, n0=None, n=None, alpha=None, test: str = "rounds",
        first_round: int = 64, growth: float | None = None, batch_size=None,
        random_state=None, index_offset: int = 0,
    ) -> RadiusCertificate:
        """Adaptive fixed-radius certification (see :func:`smoothsk.certify_radius`).

        Decides per input whether the smoothed classifier is certified at ``radius``,
        stopping each input's sampling as soon as the answer is known; ``n`` is the
        largest number of estimation draws.  With ``y`` (labels), inputs whose
        selected class is not their label draw no estimation samples.  ``test`` picks
        the sequential test (``"rounds"`` or ``"betting"``).  Defaults come from the
        estimator as in :meth:`certify`.

        Parameters
        ----------
        X : array-like or torch Dataset
            Inputs, in the range and shape the estimator was fitted on.
        radius : float
            The l2 radius to decide.
        y : array-like or None, default=None
            True labels (skips inputs whose selected class differs).
        n0, n, alpha, batch_size, random_state : optional
            None takes the estimator's (as in :meth:`certify`).
        test, first_round, growth, index_offset
            As in :func:`smoothsk.certify_radius`.

        Returns
        -------
        RadiusCertificate
        """
        X = self.check_fitted_inputs(X)
        y_index = self._label_indices(X, y)
        with self._progress(len(X), f"certify at r={radius:g}") as bar, \
                torch_threads(self.n_threads):
            result = certify_radius(
                self.module_, X, self.noise_level, radius, y=y_index,
                **self._defaults(n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                                 random_state=random_state),
                test=test, first_round=first_round, growth=growth,
                index_offset=index_offset, **self._common_options(bar),
            )
        self.check_n_classes(result.selection_counts.shape[1])
        result.classes = self.classes_
        return result

    def certify_radii(
        self, X, radii, *, y=None, n0=None, max_n=None, alpha=None, first_round: int = 64,
        growth: float | None = None, batch_size=None, random_state=None,
        index_offset: int = 0,
    ) -> RadiiCertificate:
        """The certified-accuracy curve at the grid ``radii``, sequentially (see
        :func:`smoothsk.certify_radii`): each input draws until every grid radius is
        decided, or ``max_n`` (default: ``n``) estimation draws.  With ``y`` (labels),
        inputs whose selected class is not their label draw no estimation samples.
        Defaults come from the estimator as in :meth:`certify`.

        Parameters
        ----------
        X : array-like or torch Dataset
            Inputs, in the range and shape the estimator was fitted on.
        radii : array-like of float
            The grid of l2 radii.
        y : array-like or None, default=None
            True labels (skips inputs whose selected class differs).
        n0, max_n, alpha, batch_size, random_state : optional
            None takes the estimator's (``max_n``: its ``n``).
        first_round, growth, index_offset
            As in :func:`smoothsk.certify_radii`.

        Returns
        -------
        RadiiCertificate
        """
        X = self.check_fitted_inputs(X)
        y_index = self._label_indices(X, y)
        with self._progress(len(X), "certify radii") as bar, torch_threads(self.n_threads):
            result = certify_radii(
                self.module_, X, self.noise_level, radii, y=y_index,
                **self._defaults(n0=n0, max_n=max_n, alpha=alpha, batch_size=batch_size,
                                 random_state=random_state),
                first_round=first_round,
                growth=DEFAULT_RADII_GROWTH if growth is None else growth,
                index_offset=index_offset, **self._common_options(bar),
            )
        self.check_n_classes(result.selection_counts.shape[1])
        result.classes = self.classes_
        return result

    def certify_incremental(self, X, original, certificate: Certificate, *,
                            n_zeta: int | None = None, alpha_zeta: float = 0.001,
                            recertify_above: float | None = 0.99,
                            batch_size=None, random_state=None,
                            index_offset: int = 0) -> Certificate:
        """Certify this estimator, a modified copy of ``original`` (a reduced-precision,
        pruned, fine-tuned or quantized one), from ``original``'s finished ``certificate``
        on the same ``X`` (see :func:`smoothsk.certify_incremental`).

        Runs both networks on ``n_zeta`` draws (seeded per input, a stream of their own),
        bounds how often they disagree and certifies from ``p̲_A − ζ̄`` at
        ``certificate.alpha + alpha_zeta``; inputs that path cannot serve (chosen from
        the original certificate alone) get plain CERTIFY on fresh draws.  This
        estimator's ``precision`` is the modified network's arithmetic; ``original`` runs
        at the certificate's.  Defaults come from the estimator as in :meth:`certify`.

        Parameters
        ----------
        X : array-like or torch Dataset
            The inputs ``certificate`` was computed on, in its order.
        original : fitted smoothsk estimator, torch.nn.Module or RecordedVotes
            The network that was certified, or its :func:`smoothsk.record_votes` on
            ``X`` (then only this estimator's network runs, on the recorded draws, and
            ``random_state`` defaults to the recording's).
        certificate : Certificate
            Its finished CERTIFY certificate on ``X``.
        n_zeta : int or None, default=None
            Draws on which the two networks are compared: 10,000, or the recording's.
        alpha_zeta : float, default=0.001
            Failure probability of the disagreement bound.
        recertify_above : float or None, default=0.99
            Inputs whose original ``p̲_A`` is at least this are certified from scratch
            (see :func:`smoothsk.certify_incremental`).
        batch_size, random_state : optional
            None takes the estimator's.
        index_offset : int, default=0
            As in :meth:`certify`.

        Returns
        -------
        Certificate
            Of this estimator, at level ``certificate.alpha + alpha_zeta``.
        """
        X = self.check_fitted_inputs(X)
        defaults = self._defaults(batch_size=batch_size, random_state=random_state)
        if isinstance(original, incremental.RecordedVotes) and random_state is None:
            defaults["random_state"] = None  # the recording's seed
        with torch_threads(self.n_threads):
            result = incremental.certify_incremental(
                self.module_, original, X, certificate, n_zeta=n_zeta, alpha_zeta=alpha_zeta,
                modified_precision=self.precision, recertify_above=recertify_above,
                **defaults, index_offset=index_offset)
        self.check_n_classes(result.counts.shape[1])
        result.classes = self.classes_
        return result
