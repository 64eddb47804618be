"""Smoothed ensembles: the smoothed classifier of several members' averaged votes.

Horváth, Mueller, Fischer & Vechev, "Boosting Randomized Smoothing with Variance Reduced
Classifiers" (ICLR 2022; code eth-sri/smoothing-ensembles): smoothing the soft-vote
average of k base networks reduces the variance of the votes and raises the certified
radius over the best member.  Their K-consensus aggregation evaluates members one by one
and stops once the first K agree, which cuts the cost per draw.

The ensemble is a base classifier like any other (a fixed function of its input), so
every certificate, test and guarantee of smoothsk holds for it unchanged.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.utils import Bunch

from smoothsk.base import SmoothedClassifier, is_fitted_estimator, unwrap_frozen
from smoothsk.methods.pretrained import PretrainedSmoothingClassifier
from smoothsk.validation import POSITIVE, Integer, StrOptions

__all__ = ["EnsembleNetwork", "SmoothedEnsembleClassifier"]

VOTINGS = ("soft", "hard")


class EnsembleNetwork(torch.nn.Module):
    """The members' aggregated vote as one network: scores whose argmax is the decision.

    ``voting="soft"``: ``log mean_m softmax(f_m(x))`` (the members' averaged
    probabilities); ``"hard"``: the fraction of members voting for each class (ties go
    to the lowest index, as every argmax here).  ``consensus=K``: the first K members
    are evaluated; where they all agree their class is the decision, and only the other
    rows go through the remaining members (Horváth et al.'s K-consensus).
    ``member_rows`` counts the rows every member evaluated, for measuring that saving.

    Parameters
    ----------
    members : list of torch.nn.Module
        The members' networks (returning logits over the same classes), in order.
    voting : {"soft", "hard"}, default="soft"
        Average of the members' probabilities, or of their votes.
    consensus : int or None, default=None
        K-consensus: the first K members decide the rows where they agree.
    """

    def __init__(self, members: list[torch.nn.Module], voting: str = "soft",
                 consensus: int | None = None):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.voting = voting
        self.consensus = consensus
        self.member_rows = 0

    def _scores(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        if self.voting == "soft":
            probs = torch.stack([F.softmax(o.float(), dim=1) for o in outputs]).mean(0)
            return torch.log(probs.clamp_min(1e-30))
        votes = [F.one_hot(o.argmax(1), o.shape[1]).float() for o in outputs]
        return torch.stack(votes).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.consensus or len(self.members)
        outputs = [member(x) for member in self.members[:first]]
        self.member_rows += first * len(x)
        if first == len(self.members):
            return self._scores(outputs)
        classes = torch.stack([o.argmax(1) for o in outputs])
        agree = (classes == classes[0]).all(0)
        n_classes = outputs[0].shape[1]
        # agreed rows: the agreed class, as a certain vote
        scores = torch.log(F.one_hot(classes[0], n_classes).float().clamp_min(1e-30))
        rest = torch.nonzero(~agree).flatten()
        if len(rest):
            more = [member(x[rest]) for member in self.members[first:]]
            self.member_rows += len(more) * len(rest)
            scores[rest] = self._scores([o[rest] for o in outputs] + more)
        return scores


class SmoothedEnsembleClassifier(PretrainedSmoothingClassifier):
    """The smoothed classifier of an ensemble of smoothsk estimators (Horváth et al. 2022).

    ``g(x) = argmax_c P(F(x + δ) = c)`` for the base classifier ``F`` that averages the
    members' softmax (``voting="soft"``) or their votes (``"hard"``).  Members must share
    σ; ``certify``, ``certify_radius``, ``certify_radii``, the scorers, ``GridSearchCV``
    over the members' parameters and pickling work as for every smoothsk estimator.

    Parameters
    ----------
    estimators : list of (str, estimator)
        The members, named as in scikit-learn's ``VotingClassifier``: fitted smoothsk
        estimators (or ``FrozenEstimator``s of them) with ``prefit=True``, unfitted ones
        with ``prefit=False``.  Never modified.
    prefit : bool, default=False
        True: the members are used as they are.  False: ``fit`` trains a clone of each
        on ``(X, y)``, ``n_jobs`` at a time, into ``estimators_``.
    voting : {"soft", "hard"}, default="soft"
        Average of the members' probabilities, or of their votes.
    consensus : int or None, default=None
        K-consensus: the first K members decide where they agree; the others are
        evaluated only where they do not (``1 < K <= len(estimators)``).
    n_jobs : int or None, default=None
        Members trained in parallel (joblib) with ``prefit=False``.
    **kwargs
        As :class:`~smoothsk.PretrainedSmoothingClassifier` (``sigma``: None takes the
        members' σ; another σ is refused, because the members were trained for theirs).

    Attributes
    ----------
    estimators_ : list of estimators
        The fitted members, in order.
    named_estimators_ : Bunch
        The fitted members by name.
    """

    method_name = "ensemble"
    display_name = "Ensemble"
    sigma_fixed_by_training = True
    side_model_params = ("estimators", "classifier")

    _parameter_constraints: dict = {
        **PretrainedSmoothingClassifier._parameter_constraints,
        "sigma": [*POSITIVE, None],
        "estimators": [list],
        "voting": [StrOptions(set(VOTINGS))],
        # at most the number of members: checked with the members in fit
        "consensus": [Integer(2, None, closed="left"), None],
        "n_jobs": "no_validation",  # joblib's own check
    }

    def __init__(self, estimators=None, *, prefit: bool = False, voting: str = "soft",
                 consensus: int | None = None, n_jobs: int | None = None, sigma=None,
                 **kwargs):
        kwargs.pop("classifier", None)  # built from the members in fit
        super().__init__(None, prefit=prefit, sigma=sigma, **kwargs)
        self.estimators = estimators
        self.voting = voting
        self.consensus = consensus
        self.n_jobs = n_jobs

    # ----------------------------------------------------------------- parameters
    def get_params(self, deep: bool = True) -> dict:
        """As scikit-learn's ``VotingClassifier``: with ``deep``, each member by name and
        its parameters as ``<name>__<parameter>``.

        Parameters
        ----------
        deep : bool, default=True
            Include the members and their parameters.
        """
        params = super().get_params(deep=False)
        if deep and self.estimators:
            for name, estimator in self.estimators:
                params[name] = estimator
                params.update({f"{name}__{key}": value for key, value
                               in estimator.get_params(deep=True).items()})
        return params

    def set_params(self, **params):
        names = {name for name, _ in (self.estimators or [])}
        nested: dict[str, dict] = {}
        for key in list(params):
            head = key.split("__", 1)[0]
            if head in names:
                if self.prefit:
                    raise ValueError(f"{key} would change a fitted member, which is never "
                                     "modified; pass prefit=False to fit clones of the "
                                     "members with these parameters.")
                value = params.pop(key)
                if "__" in key:
                    nested.setdefault(head, {})[key.split("__", 1)[1]] = value
                else:  # a member replaced
                    self.estimators = [(n, value if n == head else e)
                                       for n, e in self.estimators]
        super().set_params(**params)
        for name, member_params in nested.items():
            dict(self.estimators)[name].set_params(**member_params)
        return self

    def __sklearn_clone__(self):
        params = self.get_params(deep=False)
        members = params.get("estimators") or []
        # fitted members are kept by reference (never modified); unfitted ones cloned
        params["estimators"] = [(name, e if self.prefit else clone(e)) for name, e in members]
        return type(self)(**params)

    @property
    def noise_level(self) -> float:
        return self.sigma if self.sigma is not None else getattr(self, "members_sigma_", None)

    # ----------------------------------------------------------------- fitting
    def _check_members(self):
        if not isinstance(self.estimators, list) or len(self.estimators) < 2:
            raise ValueError("estimators must be a list of at least two (name, estimator) "
                             "pairs.")
        names = [pair[0] if isinstance(pair, tuple) and len(pair) == 2 else None
                 for pair in self.estimators]
        if None in names or len(set(names)) != len(names) or any(
                not isinstance(n, str) or "__" in n for n in names):
            raise ValueError("estimators must be (name, estimator) pairs with distinct "
                             "names without '__'.")
        if self.voting not in VOTINGS:
            raise ValueError(f"voting must be one of {VOTINGS}; got {self.voting!r}.")
        k = self.consensus
        if k is not None and (isinstance(k, bool) or not isinstance(k, int)
                              or not 1 < k <= len(self.estimators)):
            raise ValueError(f"consensus must be None or an int in 2 … {len(self.estimators)}"
                             f" (the number of members); got {k!r}.")

    def _resolve_classifier(self, X=None, y=None):
        self._check_members()
        if self.prefit:
            members = [unwrap_frozen(e) for _, e in self.estimators]
            for (name, _), member in zip(self.estimators, members):
                if not isinstance(member, SmoothedClassifier) or \
                        not is_fitted_estimator(member):
                    raise ValueError(f"member {name!r} is not a fitted smoothsk estimator; "
                                     "fit it first, or pass prefit=False.")
        else:
            if X is None:
                raise ValueError("prefit=False fits the members: call fit(X, y).")
            members = Parallel(n_jobs=self.n_jobs)(
                delayed(_fit_member)(estimator, X, y) for _, estimator in self.estimators)
        sigmas = sorted({float(m.noise_level) for m in members})
        if len(sigmas) > 1:
            raise ValueError(f"The members were trained at different sigma ({sigmas}); "
                             "an ensemble smooths at one sigma: use members trained at one.")
        if self.sigma is not None and not np.isclose(self.sigma, sigmas[0]):
            raise ValueError(f"sigma={self.sigma} but the members were trained at "
                             f"{sigmas[0]}; leave sigma=None to use theirs.")
        classes = [np.asarray(m.classes_) for m in members]
        if any(len(c) != len(classes[0]) or np.any(c != classes[0]) for c in classes):
            raise ValueError("The members have different classes; train them on the same "
                             "labels.")
        self.members_sigma_ = sigmas[0]
        object.__setattr__(self, "estimators_", members)
        self.named_estimators_ = Bunch(**{name: m for (name, _), m in
                                          zip(self.estimators, members)})
        network = EnsembleNetwork([copy.deepcopy(m.module_) for m in members], self.voting,
                                  self.consensus).to(self.device)
        network.eval()
        object.__setattr__(self, "classifier_", network)
        object.__setattr__(self, "classifier_network_", network)
        object.__setattr__(self, "gradient_network_", network)
        self.classifier_classes_ = classes[0]
        self.check_read_model("the members", self.classifier_classes_, X, y)

    def fit(self, X, y=None, **fit_params):
        """Fit clones of the members (``prefit=False``), or check fitted ones, against
        ``(X, y)``; then the ensemble is ready.  No other network is trained.

        Parameters
        ----------
        X, y, **fit_params
            As in :meth:`smoothsk.SmoothedClassifier.fit`.
        """
        result = super().fit(X, y, **fit_params)
        self.trained_sigma_ = float(self.noise_level)
        return result

    @property
    def fit_needs_labels(self) -> bool:
        return not self.prefit


def _fit_member(estimator, X, y):
    return clone(estimator).fit(X, y)
