import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SGD_FIT
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV, cross_val_score

from smoothsk import CRTStudent, GaussianAugClassifier, SmoothMixClassifier, crt_loss

FAST = SGD_FIT


@pytest.fixture(scope="module")
def teacher(digits):
    X, y = digits
    return GaussianAugClassifier(sigma=0.25, **FAST).fit(X[:800], y[:800])


def test_loss_matches_the_formula_on_a_fixed_case():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    X, y, noise = torch.rand(5, 3), torch.tensor([0, 1, 2, 3, 0]), 0.1 * torch.randn(5, 3)
    s, t = student(X + noise), teacher(X + noise)
    distance = torch.sqrt(((s - t) ** 2).sum(dim=1)).mean()  # per-example l2, not squared
    for a in (1.0, 0.3):
        expected = a * distance + (1 - a) * F.cross_entropy(s, y)
        got = crt_loss(student, teacher, X, y, 0.1, transfer_weight=a, noise=noise)
        torch.testing.assert_close(got, expected)
    # a = 0: Gaussian-augmentation cross-entropy on the same noisy input
    got = crt_loss(student, teacher, X, y, 0.1, transfer_weight=0.0, noise=noise)
    torch.testing.assert_close(got, F.cross_entropy(s, y))


def test_a_batchnorm_teacher_runs_in_eval_mode_with_its_running_statistics():
    """The authors' ``train`` puts the teacher in ``eval()`` and runs it under
    ``torch.no_grad()``: its BatchNorm uses (and keeps) its running statistics, even when
    the caller left it in training mode."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.BatchNorm1d(6),
                                  torch.nn.ReLU(), torch.nn.Linear(6, 4))
    for _ in range(5):  # running statistics far from a batch's own
        teacher(3 * torch.randn(32, 3) + 2)
    teacher.train()
    student = torch.nn.Linear(3, 4)
    X, y, noise = torch.rand(8, 3), torch.randint(0, 4, (8,)), 0.2 * torch.randn(8, 3)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    got = crt_loss(student, teacher, X, y, 0.2, noise=noise)
    with torch.no_grad():
        evaluated = teacher.eval()(X + noise)
        in_training = teacher.train()(X + noise)  # (moves the running statistics)
    teacher.load_state_dict(state)
    assert not torch.allclose(evaluated, in_training, atol=1e-2)  # the mode matters here
    expected = (student(X + noise) - evaluated).norm(dim=1).mean()
    torch.testing.assert_close(got, expected)
    teacher.train()
    crt_loss(student, teacher, X, y, 0.2, noise=noise)
    assert teacher.training  # its mode restored
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, state[key])  # statistics unchanged


def test_teacher_is_frozen_and_unchanged(teacher, digits):
    X, y = digits
    before = [p.detach().clone() for p in teacher.module_.parameters()]
    for p in teacher.module_.parameters():
        p.grad = None  # the teacher's own training left gradients behind
    teacher.module_.train()
    student = CRTStudent(teacher=teacher, **FAST).fit(X[:400], y[:400])
    assert teacher.module_.training  # mode restored after every step
    for p, q in zip(before, teacher.module_.parameters()):
        assert torch.equal(p, q) and q.grad is None  # no gradient reached the teacher
    assert student.sigma_ == 0.25
    assert not any(p is q for p in student.module_.parameters()
                   for q in teacher.module_.parameters())


@pytest.mark.slow
def test_student_follows_teacher_and_certifies(teacher, digits):
    X, y = digits
    student = CRTStudent(teacher=FrozenEstimator(teacher), module__hidden_units=(64,),
                         **dict(FAST, max_epochs=20)).fit(X[:800], y[:800])
    agreement = (student.predict(X[800:1000]) == teacher.predict(X[800:1000])).mean()
    assert agreement > 0.85
    cert = student.certify(X[800:1000])
    assert cert.is_correct(y[800:1000]).mean() > 0.7


class _CountingGaussian(GaussianAugClassifier):
    fits = 0

    def fit(self, X, y=None, **kw):
        type(self).fits += 1
        return super().fit(X, y, **kw)


@pytest.mark.slow
def test_grid_search_never_trains_a_fitted_teacher(digits):
    X, y = digits
    teacher = _CountingGaussian(sigma=0.25, **FAST).fit(X[:300], y[:300])
    _CountingGaussian.fits = 0
    for wrapped in (teacher, FrozenEstimator(teacher)):
        search = GridSearchCV(CRTStudent(teacher=wrapped, **dict(FAST, max_epochs=2)),
                              {"transfer_weight": [1.0, 0.5]}, cv=2)
        search.fit(X[:300], y[:300])
        assert search.best_estimator_.teacher_ is teacher
        cross_val_score(CRTStudent(teacher=wrapped, **dict(FAST, max_epochs=1)), X[:200], y[:200],
                        cv=2)
        assert clone(CRTStudent(teacher=wrapped)).teacher is wrapped
    assert _CountingGaussian.fits == 0


def test_unfitted_teacher_is_fitted_once_per_fit(digits):
    X, y = digits
    _CountingGaussian.fits = 0
    teacher = _CountingGaussian(sigma=0.5, **dict(FAST, max_epochs=2))
    student = CRTStudent(teacher=teacher, **dict(FAST, max_epochs=2)).fit(X[:200], y[:200])
    assert _CountingGaussian.fits == 1
    assert student.teacher_ is not teacher and student.sigma_ == 0.5
    assert not hasattr(teacher, "module_")  # the user's object is untouched


def test_torch_module_teacher_needs_sigma_and_classes(teacher, digits):
    X, y = digits
    net = teacher.module_
    with pytest.raises(ValueError, match="sigma=... and classes"):
        CRTStudent(teacher=net, **FAST).fit(X[:100], y[:100])
    student = CRTStudent(teacher=net, sigma=0.25, classes=list(range(10)),
                         **dict(FAST, max_epochs=2)).fit(X[:200], y[:200])
    assert list(student.classes_) == list(range(10))


def test_mismatches_are_reported_before_training(teacher, digits):
    X, y = digits
    with pytest.raises(ValueError, match="differs from the teacher's sigma"):
        CRTStudent(teacher=teacher, sigma=0.5, **FAST).fit(X[:100], y[:100])
    ok = CRTStudent(teacher=teacher, sigma=0.5, allow_sigma_mismatch=True,
                    **dict(FAST, max_epochs=1)).fit(X[:100], y[:100])
    assert ok.sigma_ == 0.5
    with pytest.raises(ValueError, match="labels the teacher does not know"):
        CRTStudent(teacher=teacher, **FAST).fit(X[:100], y[:100] + 10)
    with pytest.raises(ValueError, match="shape"):
        CRTStudent(teacher=teacher, **FAST).fit(X[:100, :32], y[:100])
    with pytest.raises(ValueError, match="needs a teacher"):
        CRTStudent(**FAST).fit(X[:100], y[:100])


def test_fold_missing_a_class_still_predicts_the_teachers_classes(teacher, digits):
    X, y = digits
    keep = y[:400] != 3
    student = CRTStudent(teacher=teacher, **dict(FAST, max_epochs=2)).fit(X[:400][keep],
                                                                          y[:400][keep])
    assert list(student.classes_) == list(teacher.classes_)


def test_chain_of_generations_and_pickle(teacher, digits):
    X, y = digits
    first = CRTStudent(teacher=teacher, **dict(FAST, max_epochs=4)).fit(X[:400], y[:400])
    second = CRTStudent(teacher=first, **dict(FAST, max_epochs=4)).fit(X[:400], y[:400])
    assert second.sigma_ == 0.25 and second.teacher_ is first
    restored = pickle.loads(pickle.dumps(second))
    np.testing.assert_array_equal(restored.certify(X[:20]).counts, second.certify(X[:20]).counts)


@pytest.mark.slow
def test_smoothmix_teacher_transfers_its_robustness(digits):
    X, y = digits
    teacher = SmoothMixClassifier(sigma=0.5, num_noise=2, num_steps=2, step_size=0.5, eta=2.0,
                                  warmup=2, **dict(FAST, max_epochs=10)).fit(X[:900], y[:900])
    student = CRTStudent(teacher=FrozenEstimator(teacher), **dict(FAST, max_epochs=20))
    student.fit(X[:900], y[:900])
    from smoothsk import average_certified_radius

    acr_t = average_certified_radius(y[900:1100], teacher.certify(X[900:1100]))
    acr_s = average_certified_radius(y[900:1100], student.certify(X[900:1100]))
    # stated margin: the student keeps at least 80 % of its teacher's ACR on digits
    assert acr_s >= 0.8 * acr_t > 0


class _ThresholdTeacher(torch.nn.Module):
    """Logit 1 grows with x: output 0 is class ``classes[0]``, output 1 is ``classes[1]``."""

    def forward(self, x):
        score = 20.0 * (x[:, :1] - 0.5)
        return torch.cat([-score, score], dim=1)


@pytest.mark.parametrize("classes", [["b", "a"], [7, 3]])
def test_torch_module_teacher_keeps_the_given_class_order(classes):
    """The teacher's output k is ``classes[k]``; sorting classes would swap the labels."""
    rng = np.random.default_rng(0)
    X = rng.random((400, 1)).astype(np.float32)
    y = np.where(X[:, 0] > 0.5, classes[1], classes[0])
    student = CRTStudent(teacher=_ThresholdTeacher(), sigma=0.1, classes=classes,
                         **dict(FAST, max_epochs=15)).fit(X, y)
    assert list(student.classes_) == classes
    far = np.abs(X[:, 0] - 0.5) > 0.2  # σ = 0.1: the smoothed vote is clear there
    assert (student.predict(X[far]) == y[far]).mean() > 0.95
    assert student.score(X[far], y[far]) > 0.95


def test_dataset_fit_keeps_the_classes_order():
    """Fitting on a torch Dataset: class index k of the targets is ``classes[k]``."""
    rng = np.random.default_rng(1)
    X = rng.random((300, 1)).astype(np.float32)
    index = (X[:, 0] > 0.5).astype(np.int64)           # 1 means classes[1] = "a"
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(index))
    clf = GaussianAugClassifier(sigma=0.1, classes=["b", "a"], **dict(FAST, max_epochs=15))
    clf.fit(dataset)
    labels = np.array(["b", "a"])[index]
    far = np.abs(X[:, 0] - 0.5) > 0.2
    assert (clf.predict(X[far]) == labels[far]).mean() > 0.95
    assert clf.score(X[far], labels[far]) > 0.95
