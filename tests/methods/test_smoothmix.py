import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.model_selection import GridSearchCV

from smoothsk import (
    SmoothMixClassifier,
    mixup_towards_uniform,
    smoothed_attack_objective,
    smoothed_pgd_attack,
    smoothmix_loss,
    warmup_factor,
)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    X = torch.rand(10, 6, generator=g)
    y = torch.randint(0, 3, (10,), generator=g)
    noises = 0.3 * torch.randn(4, 10, 6, generator=g)
    return X, y, noises


# ----------------------------------------------------------------------------- attack


def test_attack_objective_does_not_decrease(net, batch):
    X, y, noises = batch
    values = []
    for steps in range(6):
        adv = smoothed_pgd_attack(net, X, y, noises, num_steps=steps, step_size=0.05,
                                  clip_range=None).adversarial
        values.append(smoothed_attack_objective(net, adv, y, noises).detach())
    values = torch.stack(values)
    # small normalised steps on a piecewise-linear net: ascent on every example
    assert torch.all(values[1:] >= values[:-1] - 1e-6)
    assert torch.all(values[-1] > values[0])


def test_attack_respects_ball_range_and_restores_the_network(net, batch):
    X, y, noises = batch
    net.train()
    net[0].weight.requires_grad_(False)  # a frozen layer must stay frozen
    result = smoothed_pgd_attack(net, X, y, noises, num_steps=5, step_size=0.4, epsilon=0.5,
                                 return_step=1)
    dist = (result.adversarial - X).norm(dim=1)
    assert torch.all(dist <= 0.5 + 1e-5)
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    assert torch.all((result.intermediate - X).norm(dim=1) <= 0.4 + 1e-5)
    assert net.training
    assert [p.requires_grad for p in net.parameters()] == [False, True, True, True]
    assert all(p.grad is None for p in net.parameters())
    unbounded = smoothed_pgd_attack(net, X, y, noises, num_steps=3, step_size=0.2, clip_range=None)
    # without a ball the only bound is T * step_size, and the steps are not trivial
    dist = (unbounded.adversarial - X).norm(dim=1)
    assert torch.all(dist <= 0.6 + 1e-5) and torch.all(dist > 0.5)


def test_attack_rejects_bad_arguments(net, batch):
    X, y, noises = batch
    with pytest.raises(ValueError, match="return_step"):
        smoothed_pgd_attack(net, X, y, noises, num_steps=1, step_size=1.0, return_step=2)
    with pytest.raises(ValueError, match="epsilon"):
        smoothed_pgd_attack(net, X, y, noises, num_steps=1, step_size=1.0, random_start=True)
    with pytest.raises(ValueError, match="noises"):
        smoothed_pgd_attack(net, X, y, noises[:, :3], num_steps=1, step_size=1.0)


# ----------------------------------------------------------------------------- loss pieces


def test_eta_zero_is_mean_cross_entropy_over_noisy_copies(net, batch):
    X, y, noises = batch
    loss = smoothmix_loss(net, X, y, 0.3, num_steps=2, step_size=0.5, eta=0.0, noises=noises)
    expected = torch.stack([F.cross_entropy(net(X + d), y) for d in noises]).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_mixup_targets_move_towards_uniform():
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]])
    x, x_adv = torch.zeros(3, 2), torch.ones(3, 2)
    lam = torch.tensor([0.0, 0.25, 0.5])
    mixed_x, mixed_y = mixup_towards_uniform(x, x_adv, soft, lam)
    torch.testing.assert_close(mixed_x, lam.view(-1, 1).expand(3, 2))
    torch.testing.assert_close(mixed_y.sum(1), torch.ones(3))
    torch.testing.assert_close(mixed_y[0], soft[0])
    torch.testing.assert_close(mixed_y[2], torch.tensor([2 / 3, 1 / 6, 1 / 6]))
    uniform = torch.full((3,), 1 / 3)
    distances = [(mixup_towards_uniform(x, x_adv, soft, torch.full((3,), t))[1] - uniform).norm()
                 for t in (0.0, 0.2, 0.4)]
    assert distances[0] > distances[1] > distances[2]


def test_lambda_range_mask_and_kl_term(net, batch):
    X, y, noises = batch
    torch.manual_seed(0)
    loss, parts = smoothmix_loss(net, X, y, 0.3, num_steps=2, step_size=0.5, eta=2.0,
                                 noises=noises, return_parts=True)
    assert torch.all(parts["lam"] >= 0) and torch.all(parts["lam"] <= 0.5)
    correct = (parts["soft_target"].argmax(1) == y).float()
    torch.testing.assert_close(parts["correct"], correct)
    assert 0 < correct.sum() < len(y)  # both cases occur in this batch
    kl = torch.stack([
        (parts["mixed_y"] * (parts["mixed_y"].log() - F.log_softmax(net(parts["mixed_x"] + d), 1)))
        .sum(1) for d in noises
    ])  # (m, B)
    torch.testing.assert_close(parts["mixup"], (kl * correct).mean(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss, parts["cross_entropy"] + 2.0 * parts["mixup"])
    loss.backward()  # gradients reach the network through both terms
    assert all(p.grad is not None for p in net.parameters())


def test_warmup_factor_per_epoch():
    assert [warmup_factor(e, 4) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_one_step_adversary_replaces_the_clean_point_everywhere(net, batch):
    X, y, noises = batch
    lam = torch.full((10,), 0.3)
    loss, parts = smoothmix_loss(net, X, y, 0.3, num_steps=3, step_size=0.2, eta=1.0, mix_step=1,
                                 warmup=0.5, noises=noises, lam=lam, return_parts=True)
    first = smoothed_pgd_attack(net, X, y, noises, num_steps=1, step_size=0.2).adversarial
    # x̃¹ projected to radius step_size * mix_step * warmup = 0.1
    offset = first - X
    expected = X + offset * torch.clamp(0.1 / offset.norm(dim=1, keepdim=True), max=1.0)
    torch.testing.assert_close(parts["clean"], expected)
    # clean side of the cross-entropy and of the soft target ...
    logits = net(torch.cat([expected + d for d in noises]))
    torch.testing.assert_close(parts["cross_entropy"], F.cross_entropy(logits, y.repeat(4)))
    soft = F.softmax(logits, 1).view(4, 10, 3).mean(0)
    torch.testing.assert_close(parts["soft_target"], soft)
    # ... and the mixup endpoint
    torch.testing.assert_close(parts["mixed_x"], 0.7 * expected + 0.3 * parts["adversarial"])


# ----------------------------------------------------------------------------- estimator


@pytest.mark.slow
def test_digits_training_gives_far_above_chance_certified_accuracy(digits):
    X, y = digits
    clf = SmoothMixClassifier(sigma=0.25, num_noise=2, num_steps=2, step_size=0.5, eta=2.0,
                              warmup=2, max_epochs=10, lr=0.05,
                              optimizer=torch.optim.SGD, optimizer__momentum=0.9,
                              batch_size=64, n0=50, n=500, random_state=0)
    clf.fit(X[:1000], y[:1000])
    cert = clf.certify(X[1000:1200])
    # chance is 0.1; a trained smoothed classifier certifies most inputs at r = 0
    assert cert.is_correct(y[1000:1200]).mean() > 0.7


def test_grid_search_over_sigma_and_eta(digits):
    X, y = digits
    base = SmoothMixClassifier(num_noise=1, num_steps=1, max_epochs=2, n_predict=20,
                               batch_size=64, random_state=0)
    search = GridSearchCV(base, {"sigma": [0.25, 0.5], "eta": [0.0, 1.0]}, cv=2)
    search.fit(X[:200], y[:200])
    assert len(search.cv_results_["params"]) == 4
    assert {"sigma", "eta"} <= set(search.best_params_)


def test_bad_mix_step_is_reported(digits):
    X, y = digits
    with pytest.raises(ValueError, match="mix_step"):
        SmoothMixClassifier(mix_step=2).fit(X[:20], y[:20])


def test_attack_moves_inputs_in_training(digits):
    """Guard against the known port defect: a step size of 0.001 (the certification
    alpha) leaves the attack in place; ours moves each point by T * step_size."""
    X, y = digits
    Xt, yt = torch.from_numpy(X[:16]), torch.from_numpy(y[:16])
    net = torch.nn.Sequential(torch.nn.Linear(64, 10))
    noises = 0.25 * torch.randn(2, 16, 64)
    adv = smoothed_pgd_attack(net, Xt, yt, noises, num_steps=2, step_size=1.0).adversarial
    assert np.median((adv - Xt).norm(dim=1).numpy()) > 0.5


# ------------------------------------------------------------ clip range and input range


@pytest.mark.parametrize("clip_range, input_range, expected", [
    ("input_range", (0, 1), (0.0, 1.0)),
    ("input_range", (0, 255), (0.0, 255.0)),
    ("input_range", None, None),
    ((0, 1), (0, 255), (0.0, 1.0)),
    (None, (0, 1), None),
])
def test_clip_range_follows_the_declared_input_range(clip_range, input_range, expected):
    from smoothsk.validation import resolve_clip_range
    assert resolve_clip_range(clip_range, input_range) == expected


def test_a_bad_clip_range_is_refused_with_the_choices():
    from smoothsk.validation import resolve_clip_range
    with pytest.raises(ValueError, match="'input_range'"):
        resolve_clip_range("input-range", (0, 1))
    with pytest.raises(ValueError, match="low < high"):
        resolve_clip_range((1, 0), (0, 1))


@pytest.mark.parametrize("name", ["smoothmix", "smoothadv"])
def test_training_clips_the_attack_to_inputs_declared_in_0_255(name, digits, monkeypatch):
    """Inputs declared in [0, 255] are attacked in [0, 255], not clipped into [0, 1]
    (which would move every attacked point to a different image)."""
    import smoothsk.methods.smoothadv as smoothadv_module
    import smoothsk.methods.smoothmix as smoothmix_module
    from smoothsk.methods.registry import METHODS, method_options
    from smoothsk.testing import tiny_estimator_params

    module = {"smoothmix": smoothmix_module, "smoothadv": smoothadv_module}[name]
    seen = []

    def recording_loss(*args, clip_range, **kwargs):
        seen.append(clip_range)
        raise KeyboardInterrupt  # skorch ends fit quietly: one call is all we need

    monkeypatch.setattr(module, f"{name}_loss", recording_loss)
    X, y = digits
    clf = METHODS[name](**tiny_estimator_params(input_range=(0, 255), num_noise=1,
                                                max_epochs=1))
    clf.fit(255 * X[:40], y[:40])
    assert seen == [(0.0, 255.0)]
    cli_parse = method_options(METHODS[name])["clip_range"].parse
    assert cli_parse("input_range") == "input_range" and cli_parse("(0,255)") == (0.0, 255.0)
    with pytest.raises(ValueError, match="'input_range' or a tuple"):
        cli_parse("0..255")
