import pytest
import torch
import torch.nn.functional as F
from skorch.history import History

from smoothsk import (
    ConsistencyClassifier,
    MACERClassifier,
    SmoothAdvClassifier,
    StabilityClassifier,
    consistency_loss,
    macer_loss,
    smoothadv_loss,
)
from smoothsk.methods.attacks import smoothed_pgd_attack
from smoothsk.testing import tiny_estimator_params


@pytest.fixture
def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(2)
    return torch.rand(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g), g


def test_consistency_reduces_to_gaussian_cross_entropy(net, batch):
    X, y, g = batch
    noises = 0.25 * torch.randn(1, 8, 5, generator=g)
    loss = consistency_loss(net, X, y, 0.25, consistency_weight=0.0, entropy_weight=0.0,
                            noises=noises)
    torch.testing.assert_close(loss, F.cross_entropy(net(X + noises[0]), y))


def test_consistency_terms_by_hand(net, batch):
    X, y, g = batch
    noises = 0.5 * torch.randn(2, 8, 5, generator=g)
    probs = [F.softmax(net(X + d), 1) for d in noises]
    mean = sum(probs) / 2
    kl = sum((mean * (mean.log() - p.log())).sum(1).mean() for p in probs) / 2
    entropy = -(mean * mean.log()).sum(1).mean()
    ce = sum(F.cross_entropy(net(X + d), y) for d in noises) / 2
    got = consistency_loss(net, X, y, 0.5, consistency_weight=10.0, entropy_weight=0.5,
                           noises=noises)
    torch.testing.assert_close(got, ce + 10.0 * kl + 0.5 * entropy, rtol=1e-5, atol=1e-5)


def test_macer_reduces_to_smoothed_cross_entropy(net, batch):
    X, y, g = batch
    noises = 0.25 * torch.randn(4, 8, 5, generator=g)
    smoothed = sum(F.softmax(net(X + d), 1) for d in noises) / 4
    expected = F.nll_loss(torch.log(smoothed + 1e-10), y)
    got = macer_loss(net, X, y, 0.25, robustness_weight=0.0, noises=noises)
    torch.testing.assert_close(got, expected)


class _FixedLogits(torch.nn.Module):
    """Returns hand-made logits whatever the (noisy) input, one row per example."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.repeat(len(x) // len(self.logits), 1)


def test_macer_mask_and_guards_on_hand_made_logits():
    logits = [
        [2.0, 0.0, 0.0],    # correct (y=0), small gap: inside the margin -> counted
        [0.0, 2.0, 0.0],    # wrong (y=0): excluded
        [60.0, 0.0, 0.0],   # correct, tempered softmax saturates: infinite gap -> excluded
        [0.3, 0.0, 0.0],    # correct, tiny gap -> counted
    ]
    y = torch.tensor([0, 0, 0, 0])
    net = _FixedLogits(logits)
    X, noises = torch.zeros(4, 1), torch.zeros(2, 4, 1)
    loss, parts = macer_loss(net, X, y, 0.5, inverse_temperature=1.0, margin=8.0,
                             robustness_weight=1.0, noises=noises, return_parts=True)
    assert parts["active"].tolist() == [True, False, False, True]
    assert not torch.isfinite(parts["gap"][2])
    p = F.softmax(torch.tensor(logits), 1)
    normal = torch.distributions.Normal(0.0, 1.0)
    gaps = [normal.icdf(p[i, 0]) - normal.icdf(p[i].sort(descending=True).values[1])
            for i in (0, 3)]
    torch.testing.assert_close(parts["hinge"], sum(8.0 - gap for gap in gaps) * 0.25)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(net.logits.grad).all()  # the infinite gap never propagates


@pytest.mark.parametrize("cls,params", [
    (ConsistencyClassifier, dict(num_noise=2, consistency_weight=5.0)),
    (StabilityClassifier, dict(stability_weight=2.0)),
    (MACERClassifier, dict(num_noise=4, robustness_weight=4.0)),
    (SmoothAdvClassifier, dict(epsilon=0.5, num_steps=2, num_noise=2, warmup=3)),
])
@pytest.mark.slow
def test_digits_training_gives_far_above_chance_certified_accuracy(cls, params, digits):
    X, y = digits
    clf = cls(sigma=0.25, max_epochs=10, lr=0.05,
              optimizer=torch.optim.SGD, optimizer__momentum=0.9, batch_size=64,
              n0=50, n=500, random_state=0, **params).fit(X[:1000], y[:1000])
    assert clf.certify(X[1000:1200]).is_correct(y[1000:1200]).mean() > 0.7  # chance: 0.1


def test_no_parameter_is_called_alpha_except_certification():
    for cls in (ConsistencyClassifier, StabilityClassifier, MACERClassifier, SmoothAdvClassifier):
        names = cls().get_params(deep=False)
        # only the certification failure probability carries the name
        assert [name for name in names if "alpha" in name] == ["alpha"]


def test_smoothadv_without_attack_is_gaussian_cross_entropy_over_m_copies(net, batch):
    X, y, g = batch
    noises = 0.25 * torch.randn(3, 8, 5, generator=g)
    expected = sum(F.cross_entropy(net(X + d), y) for d in noises) / 3
    for loss in (smoothadv_loss(net, X, y, 0.25, epsilon=0.0, noises=noises),
                 smoothadv_loss(net, X, y, 0.25, num_steps=0, noises=noises)):
        torch.testing.assert_close(loss, expected)


def test_smoothadv_attacks_with_step_two_epsilon_over_t_inside_the_ball(net, batch):
    X, y, g = batch
    noises = 0.25 * torch.randn(2, 8, 5, generator=g)
    # T = 1: one step of length 2ε, projected back onto the sphere of radius ε
    adv = smoothed_pgd_attack(net, X, y, noises, num_steps=1, step_size=2 * 0.3,
                              epsilon=0.3, clip_range=None).adversarial
    torch.testing.assert_close((adv - X).norm(dim=1), torch.full((8,), 0.3))
    expected = sum(F.cross_entropy(net(adv + d), y) for d in noises) / 2
    got = smoothadv_loss(net, X, y, 0.25, epsilon=0.3, num_steps=1, clip_range=None,
                         noises=noises)
    torch.testing.assert_close(got, expected)
    # the attack raises the loss it is trained on (one ascent step on a smooth net)
    clean = smoothadv_loss(net, X, y, 0.25, epsilon=0.0, noises=noises)
    assert got > clean
    # the network's parameters receive gradients, the attack leaves its flags alone
    got.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_smoothadv_epsilon_warms_up_linearly():
    clf = SmoothAdvClassifier(epsilon=1.0, warmup=4)
    clf.history_ = History()
    seen = []
    for _ in range(6):
        clf.history.new_epoch()
        seen.append(clf.current_epsilon_)
    assert seen == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert SmoothAdvClassifier(epsilon=0.7, warmup=0).current_epsilon_ == 0.7


@pytest.mark.parametrize("params", [dict(epsilon=-1.0), dict(num_noise=0), dict(num_steps=-1),
                                    dict(warmup=-2)])
def test_smoothadv_rejects_bad_parameters(params, digits):
    X, y = digits
    with pytest.raises(ValueError, match=next(iter(params))):
        SmoothAdvClassifier(**params, **tiny_estimator_params()).fit(X[:50], y[:50])
