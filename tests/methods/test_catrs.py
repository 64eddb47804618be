"""CAT-RS against a transcription of its authors' training code, and the estimator.

``_authors_kl_pgd`` and ``_authors_catrs_step`` are ``KL_PGD.attack`` and the body of
``train`` in alinlab/smoothing-catrs ``code/train_catrs.py``: same list-of-chunks tensor
layout, same order of operations (first noisy forward in training mode, the attack in
eval mode with frozen parameters, the attacked forward in training mode).  The
Binomial draw is the one source of randomness that is not an input; both sides get
the same accepted counts.
"""

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_value_and_grads, conv_net, value_and_grads
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from skorch.history import History

from smoothsk import (
    CATRSClassifier,
    GaussianAugClassifier,
    catrs_loss,
    kl_pgd_noise_attack,
    smoothed_targets,
)
from smoothsk.io.runs import load_model, save_model
from smoothsk.recipes import recipe, recipe_params


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(5)
    X = torch.rand(6, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    target = F.softmax(2 * torch.randn(6, 3, generator=g), dim=1)
    target[0] = torch.tensor([1.0, 0.0, 0.0])  # a one-hot row: KL with zero entries
    noises = 0.5 * torch.randn(4, 6, 1, 4, 4, generator=g)
    return X, y, target, noises


# ----------------------------------------------------------------- the authors' code
def _authors_requires_grad_(model, requires_grad):
    for param in model.parameters():
        param.requires_grad_(requires_grad)


def _authors_kl_pgd(model, inputs, labels, noises, steps, max_norm):
    def _batch_l2norm(x):
        x_flat = x.reshape(x.size(0), -1)
        return torch.norm(x_flat, dim=1)

    m = len(noises)
    inputs_r = inputs.repeat(m, 1, 1, 1)
    noise0 = torch.cat(noises, dim=0)
    noise = noise0.detach()
    batch_size = inputs_r.size(0)
    mu0 = noise0.view(batch_size, -1).mean(1).view(-1, 1, 1, 1)
    sigma0 = (noise0 ** 2).view(batch_size, -1).mean(1).sqrt().view(-1, 1, 1, 1)
    alpha = max_norm / steps * 2
    for _ in range(steps):
        noise.requires_grad_()
        logits_r = model(inputs_r + noise)
        logits_chunk = torch.chunk(logits_r, m, dim=0)
        loss_kls = [F.kl_div(F.log_softmax(logit, dim=1), labels, reduction='none').sum(1)
                    for logit in logits_chunk]
        loss = (sum(loss_kls) / m).sum()
        grad = torch.autograd.grad(loss, [noise])[0]
        grad_norm = _batch_l2norm(grad).view(-1, 1, 1, 1)
        grad = grad / (grad_norm + 1e-8)
        noise = noise + alpha * grad
        eta = noise - noise0
        eta = eta.renorm(p=2, dim=0, maxnorm=max_norm)
        noise = noise0 + eta
        mu = noise.view(batch_size, -1).mean(1).view(-1, 1, 1, 1)
        sigma = (noise ** 2).view(inputs_r.size(0), -1).mean(1).sqrt().view(-1, 1, 1, 1)
        noise = (noise - mu) / sigma
        noise = mu0 + noise * sigma0
        noise = noise.detach()
    return torch.chunk(noise, m, dim=0)


def _authors_catrs_step(model, inputs, targets, pb, noises, accept, *, num_noise_vec, steps,
                        epsilon, lbd, confidence_mask):
    """One chunk's loss from ``train`` (``accept`` replaces ``Binomial(...).sample()``)."""
    _tril = torch.ones(num_noise_vec + 1, num_noise_vec).tril(-1)
    noises0 = noises
    inputs0_c = torch.cat([inputs + noise0 for noise0 in noises0], dim=0)
    logits0_c = model(inputs0_c)
    logits0_chunk = torch.chunk(logits0_c, num_noise_vec, dim=0)
    n_classes = logits0_c.size(1)
    t_sm0 = [F.one_hot(torch.argmax(logit, dim=1), n_classes) for logit in logits0_chunk]
    t_sm = sum(t_sm0) / num_noise_vec
    _authors_requires_grad_(model, False)
    model.eval()
    noises = _authors_kl_pgd(model, inputs, pb, noises, steps, epsilon)
    model.train()
    _authors_requires_grad_(model, True)
    inputs_c = torch.cat([inputs + noise for noise in noises], dim=0)
    logits_c = model(inputs_c)
    loss_xent = [F.cross_entropy(logit, targets, reduction='none').view(-1, 1)
                 for logit in logits0_chunk]
    loss_xent = torch.cat(loss_xent, dim=1)
    loss_xent, _ = loss_xent.sort()
    if confidence_mask:
        w = -F.nll_loss(pb, targets, reduction='none')
    else:
        w = -F.nll_loss(t_sm, targets, reduction='none')
    accept = accept.long().clamp(min=1)
    mask_fa = (accept == num_noise_vec)
    loss_xent = (loss_xent * _tril[accept]).mean(1)
    logits_chunk = torch.chunk(logits_c, num_noise_vec, dim=0)
    loss_kl = [F.kl_div(F.log_softmax(logit, dim=1), pb, reduction='none').sum(1, keepdim=True)
               for logit in logits_chunk]
    loss_klw, _ = torch.cat(loss_kl, dim=1).max(1)
    loss = (loss_xent + lbd * loss_klw * mask_fa).mean()
    return loss, w


# --------------------------------------------------------------------- transcription
@pytest.mark.parametrize("with_batchnorm", [False, True])
def test_attack_equals_the_published_kl_pgd(batch, with_batchnorm):
    X, _, target, noises = batch
    net = conv_net(with_batchnorm).eval()
    ours = kl_pgd_noise_attack(net, X, target, noises, num_steps=3, epsilon=0.7)
    theirs = torch.cat(_authors_kl_pgd(net, X, target, list(noises), 3, 0.7))
    torch.testing.assert_close(ours.flatten(0, 1), theirs, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours, noises)  # the attack moved the noise


@pytest.mark.parametrize("with_batchnorm", [False, True])
@pytest.mark.parametrize("confidence_mask", [False, True])
def test_loss_equals_the_published_loss(batch, with_batchnorm, confidence_mask):
    X, y, target, noises = batch
    net = conv_net(with_batchnorm)
    # every regime: K clamped from 0, partial, and fully accepted (the KL term counts)
    accept = torch.tensor([0, 1, 2, 3, 4, 4])
    kwargs = dict(num_steps=2, epsilon=1.0, confidence_mask=confidence_mask)
    ours = value_and_grads(net, lambda m: catrs_loss(
        m, X, y, target, 0.5, noises=noises, accept=accept, kl_weight=1.5, **kwargs))
    theirs = value_and_grads(net, lambda m: _authors_catrs_step(
        m, X, y, target, list(noises), accept, num_noise_vec=4, steps=2, epsilon=1.0, lbd=1.5,
        confidence_mask=confidence_mask))
    assert_same_value_and_grads(ours, theirs)


def test_confidence_is_the_published_binomial_probability(batch):
    X, y, target, noises = batch
    net = conv_net(False)
    for mask in (False, True):
        _, parts = catrs_loss(net, X, y, target, 0.5, noises=noises, num_steps=1,
                              confidence_mask=mask, accept=torch.full((6,), 4),
                              return_parts=True)
        _, w = _authors_catrs_step(net, X, y, target, list(noises), torch.full((6,), 4),
                                   num_noise_vec=4, steps=1, epsilon=1.0, lbd=1.0,
                                   confidence_mask=mask)
        torch.testing.assert_close(parts["confidence"], w.float())


# ------------------------------------------------------------------------ reductions
def test_everything_accepted_without_kl_is_mean_cross_entropy(batch):
    X, y, target, noises = batch
    net = conv_net(False).train()
    loss = catrs_loss(net, X, y, target, 0.5, noises=noises, num_steps=1, kl_weight=0.0,
                      accept=torch.full((6,), 4))
    logits = net((X.unsqueeze(0) + noises).flatten(0, 1))
    torch.testing.assert_close(loss, F.cross_entropy(logits, y.repeat(4)))


def test_one_accepted_copy_is_the_easiest_cross_entropy_over_m(batch):
    X, y, target, noises = batch
    net = conv_net(False).train()
    _, parts = catrs_loss(net, X, y, target, 0.5, noises=noises, num_steps=1,
                          accept=torch.zeros(6), return_parts=True)
    logits = net((X.unsqueeze(0) + noises).flatten(0, 1))
    ce = F.cross_entropy(logits, y.repeat(4), reduction="none").view(4, 6)
    torch.testing.assert_close(parts["low"], ce.min(dim=0).values / 4)
    assert parts["accept"].tolist() == [1] * 6 and not parts["fully_accepted"].any()


def test_accepted_count_follows_the_confidence(batch):
    """``K ~ Binomial(m, w)``: w = 1 accepts every copy, w = 0 is clamped to one."""
    X, y, _, noises = batch
    net = conv_net(False)
    sure = F.one_hot(y, 3).float()
    _, parts = catrs_loss(net, X, y, sure, 0.5, noises=noises, num_steps=1,
                          confidence_mask=True, return_parts=True)
    assert parts["accept"].tolist() == [4] * 6
    wrong = F.one_hot((y + 1) % 3, 3).float()
    _, parts = catrs_loss(net, X, y, wrong, 0.5, noises=noises, num_steps=1,
                          confidence_mask=True, return_parts=True)
    assert parts["accept"].tolist() == [1] * 6


def test_accepted_count_is_a_binomial_draw_for_a_fractional_confidence():
    """``accept = Binomial(m, w).sample()`` in the authors' ``train_catrs.py``: for
    w = 0.3 and m = 4 the count has mean m·w = 1.2 and variance m·w(1−w) = 0.84 before
    the clamp to ≥ 1; after it, P(K=1) = P(0) + P(1) = 0.6517, P(K=4) = 0.0081.
    ``round(m·w)`` would give K = 1 always (variance 0)."""
    from scipy.stats import binom

    torch.manual_seed(0)
    examples, m, w = 20_000, 4, 0.3
    X = torch.zeros(examples, 2)
    y = torch.zeros(examples, dtype=torch.long)
    target = torch.tensor([[w, 1 - w]]).expand(examples, 2)
    net = torch.nn.Linear(2, 2)
    _, parts = catrs_loss(net, X, y, target, 0.5, noises=torch.zeros(m, examples, 2),
                          num_steps=1, confidence_mask=True, return_parts=True)
    counts = np.bincount(parts["accept"].numpy(), minlength=m + 1)[1:] / examples
    expected = binom.pmf(np.arange(m + 1), m, w)
    expected = np.r_[expected[0] + expected[1], expected[2:]]  # the clamp K >= 1
    # each frequency's SE is sqrt(p(1−p)/20,000) <= 0.0034; 5 SE leaves room for 4 cells
    np.testing.assert_allclose(counts, expected, atol=5 * 0.0034)
    mean = (np.arange(1, m + 1) * expected).sum()
    var = (np.arange(1, m + 1) ** 2 * expected).sum() - mean**2
    accept = parts["accept"].double()
    assert abs(accept.mean().item() - mean) < 5 * np.sqrt(var / examples)
    # the sample variance of 20,000 draws is within 0.05 of 0.446 (its SE is about 0.006)
    assert abs(accept.var().item() - var) < 0.05 and var > 0.4


def test_attack_restandardises_each_copy_to_its_start(batch):
    """``δ ← μ⁰ + σ⁰ (δ − μ) / rms(δ)``: the mean is the start's, and the spread is the
    start's rms times std/rms ≤ 1 of the moved noise (the authors divide the centred
    noise by its uncentred rms)."""
    X, _, target, noises = batch
    attacked = kl_pgd_noise_attack(conv_net(False), X, target, noises, num_steps=4,
                                   epsilon=1.0)
    flat, start = attacked.flatten(2), noises.flatten(2)
    torch.testing.assert_close(flat.mean(2), start.mean(2), rtol=1e-4, atol=1e-5)
    assert (flat.std(2, correction=0) <= start.pow(2).mean(2).sqrt() * (1 + 1e-5)).all()


def test_attack_increases_the_kl_to_the_target(batch):
    X, _, target, noises = batch
    net = conv_net(False).eval()

    def kl(n):
        logp = F.log_softmax(net((X.unsqueeze(0) + n).flatten(0, 1)), dim=1)
        return F.kl_div(logp, target.repeat(4, 1), reduction="none").sum()

    attacked = kl_pgd_noise_attack(net, X, target, noises, num_steps=4, epsilon=1.0)
    assert kl(attacked) > kl(noises)
    assert all(p.requires_grad for p in net.parameters()) and not net.training


# ------------------------------------------------------------------------- estimator
@pytest.fixture(scope="module")
def gaussian_target(digits):
    X, y = digits
    return GaussianAugClassifier(sigma=0.25, max_epochs=10, random_state=0).fit(X[:1000],
                                                                                y[:1000])


@pytest.mark.slow
def test_digits_training_gives_far_above_chance_certified_accuracy(digits, gaussian_target):
    X, y = digits
    clf = CATRSClassifier(sigma=0.25, num_noise=2, num_steps=2, max_epochs=10,
                          target_model=gaussian_target, target_draws=200, n0=50, n=500,
                          random_state=0)
    clf.fit(X[:1000], y[:1000])
    assert clf.target_model_ is gaussian_target
    assert clf.target_prob_.shape == (1000, 10)
    np.testing.assert_allclose(clf.target_prob_.sum(1), 1.0, rtol=1e-6)
    cert = clf.certify(X[1000:1200])
    # chance is 0.1; a trained smoothed classifier certifies most inputs at r = 0
    assert cert.is_correct(y[1000:1200]).mean() > 0.7


def test_targets_are_the_smoothed_prediction_of_the_target_model(digits, gaussian_target):
    X, _ = digits
    probs = smoothed_targets(gaussian_target, X[:50], 400, random_state=1)
    # predict_proba draws from the same prediction stream keyed by (random_state, index)
    same = copy.deepcopy(gaussian_target).set_params(n_predict=400, random_state=1)
    np.testing.assert_array_equal(probs, same.predict_proba(X[:50]).astype(np.float32))


def test_without_a_target_model_a_gaussian_one_is_trained_first(digits):
    X, y = digits
    clf = CATRSClassifier(sigma=0.5, target_sigma=0.25, num_noise=1, num_steps=1,
                          max_epochs=2, target_draws=20, n_predict=20, random_state=0)
    clf.fit(X[:200], y[:200])
    assert isinstance(clf.target_model_, GaussianAugClassifier)
    assert clf.target_model_.sigma == 0.25 and clf.target_model_.max_epochs == 2
    assert clf.predict(X[:5]).shape == (5,)
    # the target trains on the loader batch B = batch_size · m (train_cohen.py: 256)
    assert clf.target_model_.batch_size == 64 * 1
    recipe_like = CATRSClassifier(sigma=0.5, num_noise=4, batch_size=16, num_steps=1,
                                  max_epochs=1, target_draws=20, n_predict=20, random_state=0)
    assert recipe_like.fit(X[:100], y[:100]).target_model_.batch_size == 64
    explicit = clone(recipe_like).set_params(target_batch_size=32).fit(X[:100], y[:100])
    assert explicit.target_model_.batch_size == 32


def test_clone_keeps_a_fitted_target_and_refits_an_unfitted_one(gaussian_target):
    kept = clone(CATRSClassifier(target_model=gaussian_target))
    assert kept.target_model is gaussian_target
    frozen = FrozenEstimator(gaussian_target)
    assert clone(CATRSClassifier(target_model=frozen)).target_model is frozen
    unfitted = GaussianAugClassifier(sigma=0.25)
    assert clone(CATRSClassifier(target_model=unfitted)).target_model is not unfitted


def test_epsilon_doubles_from_the_warmup_epoch(monkeypatch):
    seen = []
    monkeypatch.setattr("smoothsk.methods.catrs.catrs_loss",
                        lambda *args, **kwargs: seen.append(kwargs["epsilon"]))
    clf = CATRSClassifier(epsilon=0.5, epsilon_warmup=2)
    clf.module_ = None
    for epochs in range(1, 5):  # zero-based epochs 0..3: ``if epoch >= args.warmup``
        clf.history = History()
        for _ in range(epochs):
            clf.history.new_epoch()
        clf.training_loss({"X": None, "target_prob": None}, None)
    assert seen == [0.5, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("params, match", [
    (dict(num_noise=0), "num_noise"),
    (dict(num_steps=1.5), "num_steps"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(kl_weight=-1.0), "kl_weight"),
    (dict(epsilon_warmup=-1), "epsilon_warmup"),
    (dict(target_draws=0), "target_draws"),
    (dict(target_model="gaussian"), "target_model must be"),
])
def test_bad_parameters_are_reported(digits, params, match):
    X, y = digits
    with pytest.raises(ValueError, match=match):
        CATRSClassifier(max_epochs=1, target_draws=params.pop("target_draws", 10),
                        **params).fit(X[:40], y[:40])


def test_target_model_must_know_the_classes_and_shape(digits, gaussian_target):
    X, y = digits
    with pytest.raises(ValueError, match="labels target_model does not know"):
        CATRSClassifier(target_model=gaussian_target).fit(X[:40], y[:40] + 10)
    with pytest.raises(ValueError, match="takes inputs of shape"):
        CATRSClassifier(target_model=gaussian_target).fit(X[:40, :32], y[:40])


def test_model_file_and_pickle_round_trip(digits, gaussian_target, tmp_path):
    X, y = digits
    clf = CATRSClassifier(sigma=0.25, num_noise=1, num_steps=1, max_epochs=1, n_predict=50,
                          target_model=gaussian_target, target_draws=20, random_state=0)
    clf.fit(X[:200], y[:200])
    save_model(clf, tmp_path / "catrs.smoothsk")
    loaded = load_model(tmp_path / "catrs.smoothsk")
    np.testing.assert_array_equal(loaded.predict(X[:30]), clf.predict(X[:30]))
    assert loaded.target_model is None  # a training-time object, not saved
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict(X[:30]), clf.predict(X[:30]))


def test_published_recipes():
    cifar = recipe("catrs", "cifar10", 0.5)
    assert (cifar.params["kl_weight"], cifar.params["num_noise"], cifar.batch_size) == (1.0, 4, 64)
    assert [recipe("catrs", "cifar10", s).params["kl_weight"] for s in (0.25, 0.5, 1.0)] == \
        [0.5, 1.0, 2.0]
    fmnist = recipe_params(recipe("catrs", "fashion-mnist", 0.25))
    assert (fmnist["max_epochs"], fmnist["lr"], fmnist["kl_weight"]) == (150, 0.01, 1.0)
    # the CAT-RS script steps after the epoch: drops at epochs 51 and 101 (zero-based)
    assert fmnist["callbacks"][0][1].kwargs["milestones"] == [51, 101]


