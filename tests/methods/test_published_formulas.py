"""Every baseline's loss against a transcription of its authors' training code.

Each ``_authors_*`` function below is the published formula, transcribed from the
training scripts behind the SmoothMix tables (jh-jeong/smoothmix ``code/train_stab.py``,
``code/third_party/macer.py`` from RuntianZ/macer, ``code/train_consistency.py`` with
``code/third_party/consistency.py`` from jh-jeong/smoothing-consistency, and
``code/train_salman.py`` with ``code/third_party/smoothadv.py``'s ``PGD_L2`` from
Hadisalman/smoothing-adversarial): same tensor layout, same order of operations.
smoothsk's loss must give the same value *and* the same parameter gradients on fixed
tensors, with BatchNorm in training mode where the pass structure matters.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_value_and_grads, conv_net, value_and_grads
from skorch.history import History

from smoothsk import (
    MACERClassifier,
    consistency_loss,
    macer_loss,
    smoothadv_loss,
    stability_loss,
)
from smoothsk.methods.attacks import smoothed_pgd_attack


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(3)
    return torch.rand(6, 1, 4, 4, generator=g), torch.randint(0, 3, (6,), generator=g), g


# ------------------------------------------------------------------ Stability training
def _authors_stability(model, inputs, targets, noise, lbd):
    """``train_stab.py``: two forward passes, soft target not detached."""
    logits = model(inputs)
    logits_n = model(inputs + noise)
    loss_xent = F.cross_entropy(logits, targets)
    targets_prob = F.softmax(logits, dim=1)                       # _cross_entropy(...)
    stab = (-targets_prob * F.log_softmax(logits_n, dim=1)).sum(1).mean()
    return loss_xent + lbd * stab


@pytest.mark.parametrize("with_batchnorm", [False, True])
def test_stability_equals_the_published_loss(images, with_batchnorm):
    X, y, g = images
    noise = 0.5 * torch.randn(X.shape, generator=g)
    net = conv_net(with_batchnorm)
    ours = value_and_grads(net, lambda m: stability_loss(m, X, y, 0.5, stability_weight=2.0,
                                                          noise=noise))
    theirs = value_and_grads(net, lambda m: _authors_stability(m, X, y, noise, 2.0))
    assert_same_value_and_grads(ours, theirs)


def test_stability_pass_structure_matters_with_batchnorm(images):
    """One concatenated pass (the former implementation) is a different loss under BatchNorm."""
    X, y, g = images
    noise = 0.5 * torch.randn(X.shape, generator=g)
    net = conv_net(True)

    def one_pass(m):
        logits = m(torch.cat([X, X + noise]))
        clean, noisy = logits[: len(X)], logits[len(X):]
        target = F.softmax(clean, 1)
        return F.cross_entropy(clean, y) + 2.0 * (-target * F.log_softmax(noisy, 1)).sum(1).mean()

    ours = value_and_grads(net, lambda m: stability_loss(m, X, y, 0.5, noise=noise))
    concatenated = value_and_grads(net, one_pass)
    assert not torch.allclose(ours[0], concatenated[0], rtol=1e-4)


def test_stability_term_is_kl_plus_clean_entropy(images):
    X, y, g = images
    noise = 0.3 * torch.randn(X.shape, generator=g)
    net = conv_net(False).eval()
    with torch.no_grad():
        p, q = F.softmax(net(X), 1), F.softmax(net(X + noise), 1)
        kl = (p * (p.log() - q.log())).sum(1).mean()
        entropy = -(p * p.log()).sum(1).mean()
        clean_ce = F.cross_entropy(net(X), y)
        got = stability_loss(net, X, y, 0.3, stability_weight=2.0, noise=noise)
    torch.testing.assert_close(got, clean_ce + 2.0 * (kl + entropy), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ MACER
def _authors_macer(model, inputs, targets, noise, *, sigma, lbd, gauss_num, beta, gamma,
                   num_classes):
    """``macer_train`` for one batch; ``noise`` in its example-major layout (B·k, ...)."""
    m = torch.distributions.Normal(torch.tensor([0.0]), torch.tensor([1.0]))
    input_size = len(inputs)
    new_shape = [input_size * gauss_num]
    new_shape.extend(inputs[0].shape)
    inputs = inputs.repeat((1, gauss_num, 1, 1)).view(new_shape)
    noisy_inputs = inputs + noise
    outputs = model(noisy_inputs)
    outputs = outputs.reshape((input_size, gauss_num, num_classes))
    outputs_softmax = F.softmax(outputs, dim=2).mean(1)
    outputs_logsoftmax = torch.log(outputs_softmax + 1e-10)
    classification_loss = F.nll_loss(outputs_logsoftmax, targets, reduction="sum")
    if lbd == 0:
        robustness_loss = classification_loss * 0
    else:
        beta_outputs = outputs * beta
        beta_outputs_softmax = F.softmax(beta_outputs, dim=2).mean(1)
        top2 = torch.topk(beta_outputs_softmax, 2)
        top2_score, top2_idx = top2[0], top2[1]
        indices_correct = top2_idx[:, 0] == targets
        out0, out1 = top2_score[indices_correct, 0], top2_score[indices_correct, 1]
        robustness_loss = m.icdf(out1) - m.icdf(out0)
        indices = (~torch.isnan(robustness_loss) & ~torch.isinf(robustness_loss)
                   & (torch.abs(robustness_loss) <= gamma))
        out0, out1 = out0[indices], out1[indices]
        robustness_loss = m.icdf(out1) - m.icdf(out0) + gamma
        robustness_loss = robustness_loss.sum() * sigma / 2
    loss = classification_loss + lbd * robustness_loss
    return loss / input_size


@pytest.mark.parametrize("lbd", [0.0, 16.0])
@pytest.mark.parametrize("with_batchnorm", [False, True])
def test_macer_equals_the_published_loss(images, lbd, with_batchnorm):
    X, y, g = images
    k, sigma = 4, 0.5
    noise = sigma * torch.randn((len(X) * k, *X.shape[1:]), generator=g)   # example-major
    ours_noises = noise.view(len(X), k, *X.shape[1:]).transpose(0, 1)       # draw-major
    net = conv_net(with_batchnorm)
    # β = 1 keeps the tempered top-2 away from 1, so the hinge is active for some examples.
    kwargs = dict(inverse_temperature=1.0, margin=8.0, robustness_weight=lbd)
    ours = value_and_grads(net, lambda m: macer_loss(m, X, y, sigma, noises=ours_noises,
                                                      **kwargs))
    theirs = value_and_grads(net, lambda m: _authors_macer(
        m, X, y, noise, sigma=sigma, lbd=lbd, gauss_num=k, beta=1.0, gamma=8.0, num_classes=3))
    assert_same_value_and_grads(ours, theirs, rtol=1e-4, atol=1e-5)


def _with_epochs(estimator, epochs: int):
    estimator.history = History()
    for _ in range(epochs):
        estimator.history.new_epoch()
    return estimator


def test_macer_deferred_switches_the_hinge_on_after_the_first_lr_step():
    """``if args.deferred and epoch <= args.lr_step_size: lbd = 0`` with lr_step_size = 30."""
    clf = MACERClassifier(robustness_weight=16.0, deferred=30)
    weights = [_with_epochs(clf, epoch + 1).current_robustness_weight_ for epoch in range(90)]
    published = [0.0 if epoch <= 30 else 16.0 for epoch in range(90)]
    assert weights == published
    assert _with_epochs(MACERClassifier(robustness_weight=16.0), 1).current_robustness_weight_ \
        == 16.0


@pytest.mark.parametrize("deferred", [-1, 2.5, "30"])
def test_macer_rejects_bad_deferred(deferred):
    X = np.random.default_rng(0).random((8, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"'deferred' parameter of MACERClassifier must be an "
                       r"int in the range \[0, inf\) or None"):
        MACERClassifier(deferred=deferred, max_epochs=1).fit(X, np.arange(8) % 2)


# ------------------------------------------------------------------ Consistency
def _authors_consistency(model, inputs, targets, noises, lbd, eta):
    """``train_consistency.py`` with ``consistency_loss(..., loss='default')``."""
    inputs_c = torch.cat([inputs + noise for noise in noises], dim=0)
    targets_c = targets.repeat(len(noises))
    logits = model(inputs_c)
    loss_xent = F.cross_entropy(logits, targets_c)
    logits_chunk = torch.chunk(logits, len(noises), dim=0)
    softmax = [F.softmax(logit, dim=1) for logit in logits_chunk]
    avg_softmax = sum(softmax) / len(noises)
    loss_kl = [F.kl_div(F.log_softmax(logit, dim=1), avg_softmax, reduction="none").sum(1)
               for logit in logits_chunk]
    loss_kl = sum(loss_kl) / len(noises)
    loss_ent = (-avg_softmax * torch.log(avg_softmax.clamp(min=1e-20))).sum(1)
    return loss_xent + (lbd * loss_kl + eta * loss_ent).mean()


@pytest.mark.parametrize("lbd", [5.0, 10.0])
@pytest.mark.parametrize("with_batchnorm", [False, True])
def test_consistency_equals_the_published_loss(images, lbd, with_batchnorm):
    X, y, g = images
    noises = 0.5 * torch.randn((2, *X.shape), generator=g)
    net = conv_net(with_batchnorm)
    ours = value_and_grads(net, lambda m: consistency_loss(
        m, X, y, 0.5, consistency_weight=lbd, entropy_weight=0.5, noises=noises))
    theirs = value_and_grads(net, lambda m: _authors_consistency(m, X, y, list(noises), lbd, 0.5))
    assert_same_value_and_grads(ours, theirs)


# ------------------------------------------------------------------ SmoothAdv
def _authors_pgd_multinoise(model, inputs, labels, noise, num_noise_vectors, steps, max_norm):
    """``PGD_L2._attack_mutlinoise``; ``inputs`` and ``noise`` example-major (B·m, ...)."""
    batch_size = labels.shape[0]
    delta = torch.zeros((len(labels), *inputs.shape[1:]), requires_grad=True)
    optimizer = torch.optim.SGD([delta], lr=max_norm / steps * 2)
    for _ in range(steps):
        adv = inputs + delta.repeat(1, num_noise_vectors, 1, 1).view_as(inputs)
        adv = adv + noise
        logits = model(adv)
        softmax = F.softmax(logits, dim=1)
        average_softmax = softmax.reshape(-1, num_noise_vectors, logits.shape[-1]).mean(
            1, keepdim=True).squeeze(1)
        logsoftmax = torch.log(average_softmax.clamp(min=1e-20))
        ce_loss = F.nll_loss(logsoftmax, labels)
        loss = -1 * ce_loss
        optimizer.zero_grad()
        loss.backward()
        grad_norms = delta.grad.view(batch_size, -1).norm(p=2, dim=1)
        delta.grad.div_(grad_norms.view(-1, 1, 1, 1))
        optimizer.step()
        delta.data.add_(inputs[::num_noise_vectors])
        delta.data.clamp_(0, 1).sub_(inputs[::num_noise_vectors])
        delta.data.renorm_(p=2, dim=0, maxnorm=max_norm)
    return inputs + delta.repeat(1, num_noise_vectors, 1, 1).view_as(inputs)


def _authors_smoothadv(model, inputs, targets, noise, m, steps, epsilon):
    """``train_salman.py``'s step on one chunk: attack in eval mode, then CE in train mode."""
    inputs = inputs.repeat((1, m, 1, 1)).reshape(-1, *inputs.shape[1:])
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    inputs = _authors_pgd_multinoise(model, inputs, targets, noise, m, steps, epsilon).detach()
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    targets = targets.unsqueeze(1).repeat(1, m).reshape(-1, 1).squeeze()
    return F.cross_entropy(model(inputs + noise), targets)


@pytest.mark.parametrize("with_batchnorm", [False, True])
def test_smoothadv_equals_the_published_attack_and_loss(images, with_batchnorm):
    X, y, g = images
    m, steps, epsilon, sigma = 3, 5, 255 / 256, 0.25
    noise = sigma * torch.randn((len(X) * m, *X.shape[1:]), generator=g)  # example-major
    ours_noises = noise.view(len(X), m, *X.shape[1:]).transpose(0, 1)
    net = conv_net(with_batchnorm)
    ours = value_and_grads(net, lambda mod: smoothadv_loss(
        mod, X, y, sigma, epsilon=epsilon, num_steps=steps, noises=ours_noises))
    theirs = value_and_grads(net, lambda mod: _authors_smoothadv(mod, X, y, noise, m, steps,
                                                                  epsilon))
    assert_same_value_and_grads(ours, theirs, rtol=1e-4, atol=1e-5)


def test_smoothadv_clips_before_projecting(images):
    """Points pushed outside [0, 1] far from x: clip-then-project stays in the ε-ball."""
    X, y, g = images
    net = conv_net(False)
    noises = 0.25 * torch.randn((2, *X.shape), generator=g)
    m = len(noises)
    authors_inputs = X.repeat((1, m, 1, 1)).reshape(-1, *X.shape[1:])
    authors_noise = noises.transpose(0, 1).reshape(-1, *X.shape[1:])
    theirs = _authors_pgd_multinoise(net.eval(), authors_inputs, y, authors_noise, m, 4, 0.5)
    ours = smoothed_pgd_attack(net, X, y, noises, num_steps=4, step_size=2 * 0.5 / 4,
                               epsilon=0.5, clip_before_projection=True).adversarial
    torch.testing.assert_close(ours, theirs[::m], rtol=1e-5, atol=1e-6)
    assert ((ours - X).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert ours.min() >= 0 and ours.max() <= 1


@pytest.mark.parametrize("with_batchnorm", [False, True])
def test_macer_at_beta_16_with_a_margin_that_excludes_some_examples(with_batchnorm):
    """At the published β = 16, with γ inside the spread of the tempered gaps: β, its
    direction and the hinge's selection all decide the value (a β of 1 or gaps far below
    γ would test none of them)."""
    g = torch.Generator().manual_seed(5)
    X = torch.rand(24, 1, 4, 4, generator=g)
    net = conv_net(with_batchnorm)
    with torch.no_grad():
        y = net.eval()(X).argmax(1)  # mostly correct, so the hinge has examples to select
    y[::4] = (y[::4] + 1) % 3
    k, sigma, beta, gamma, lbd = 8, 0.25, 16.0, 1.5, 16.0
    noise = sigma * torch.randn((len(X) * k, *X.shape[1:]), generator=g)   # example-major
    ours_noises = noise.view(len(X), k, *X.shape[1:]).transpose(0, 1)       # draw-major
    kwargs = dict(inverse_temperature=beta, margin=gamma, robustness_weight=lbd)
    _, parts = macer_loss(net.train(), X, y, sigma, noises=ours_noises, return_parts=True,
                          **kwargs)
    gap, active = parts["gap"], parts["active"]
    correct = active | (gap > gamma)
    # some correct examples inside the margin, some outside, some between γ/2 and γ
    assert active.any() and (~active & correct).any()
    assert (active & (gap > gamma / 2)).any()
    ours = value_and_grads(net, lambda m: macer_loss(m, X, y, sigma, noises=ours_noises,
                                                      **kwargs))
    theirs = value_and_grads(net, lambda m: _authors_macer(
        m, X, y, noise, sigma=sigma, lbd=lbd, gauss_num=k, beta=beta, gamma=gamma,
        num_classes=3))
    assert_same_value_and_grads(ours, theirs, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ SmoothMix
class _AuthorsSmoothMixPGD:
    """``SmoothMix_PGD`` of jh-jeong/smoothmix ``code/train.py``."""

    def __init__(self, steps, mix_step, alpha=None, maxnorm_s=None, maxnorm=None):
        self.steps = steps
        self.mix_step = mix_step
        self.alpha = alpha
        self.maxnorm = maxnorm
        self.maxnorm_s = alpha * mix_step if maxnorm_s is None else maxnorm_s

    def attack(self, model, inputs, labels, noises=None):
        def _batch_l2norm(x):
            return torch.norm(x.reshape(x.size(0), -1), dim=1)

        def _project(x, x0, maxnorm=None):
            if maxnorm is not None:
                eta = x - x0
                eta = eta.renorm(p=2, dim=0, maxnorm=maxnorm)
                x = x0 + eta
            x = torch.clamp(x, 0, 1)
            return x.detach()

        adv = inputs.detach()
        init = inputs.detach()
        for i in range(self.steps):
            if i == self.mix_step:
                init = adv.detach()
            adv.requires_grad_()
            softmax = [F.softmax(model(adv + noise), dim=1) for noise in noises]
            avg_softmax = sum(softmax) / len(noises)
            logsoftmax = torch.log(avg_softmax.clamp(min=1e-20))
            loss = F.nll_loss(logsoftmax, labels, reduction="sum")
            grad = torch.autograd.grad(loss, [adv])[0]
            grad_norm = _batch_l2norm(grad).view(-1, 1, 1, 1)
            grad = grad / (grad_norm + 1e-8)
            adv = adv + self.alpha * grad
            adv = _project(adv, inputs, self.maxnorm)
        init = _project(init, inputs, self.maxnorm_s)
        return init, adv


def _authors_smoothmix_step(model, inputs, targets, noises, lam, *, eta, warmup_v, steps,
                            mix_step, alpha, n_classes):
    """One mini-batch of ``train`` in ``code/train.py`` (with ``attacker.maxnorm_s =
    warmup_v * args.maxnorm_s`` set per epoch by ``main``), up to ``loss.backward()``;
    ``_mixup_data``'s ``torch.rand(...) / 2`` is the given ``lam``."""
    attacker = _AuthorsSmoothMixPGD(steps=steps, mix_step=mix_step, alpha=alpha)
    attacker.maxnorm_s = warmup_v * attacker.maxnorm_s
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():                                   # requires_grad_(model, False)
        p.requires_grad_(False)
    model.eval()
    inputs, inputs_adv = attacker.attack(model, inputs, targets, noises=noises)
    model.train()
    for p, flag in zip(model.parameters(), flags):
        p.requires_grad_(flag)
    num_noise_vec = len(noises)
    in_clean_c = torch.cat([inputs + noise for noise in noises], dim=0)
    logits_c = model(in_clean_c)
    targets_c = targets.repeat(num_noise_vec)
    logits_c_chunk = torch.chunk(logits_c, num_noise_vec, dim=0)
    clean_avg_sm = sum(F.softmax(logit, dim=1) for logit in logits_c_chunk) / num_noise_vec
    loss_xent = F.cross_entropy(logits_c, targets_c, reduction="none")
    _unif = torch.eye(n_classes).mean(0, keepdim=True)               # _mixup_data
    in_mix = (1 - lam).view(-1, 1, 1, 1) * inputs + lam.view(-1, 1, 1, 1) * inputs_adv
    targets_mix = (1 - lam).view(-1, 1) * clean_avg_sm + lam.view(-1, 1) * _unif
    in_mix_c = torch.cat([in_mix + noise for noise in noises], dim=0)
    targets_mix_c = targets_mix.repeat(num_noise_vec, 1)
    logits_mix_c = F.log_softmax(model(in_mix_c), dim=1)
    _, top1_idx = torch.topk(clean_avg_sm, 1)
    ind_correct = (top1_idx[:, 0] == targets).float().repeat(num_noise_vec)
    loss_mixup = F.kl_div(logits_mix_c, targets_mix_c, reduction="none").sum(1)
    return loss_xent.mean() + eta * warmup_v * (ind_correct * loss_mixup).mean()


@pytest.mark.parametrize("mix_step", [0, 1])
@pytest.mark.parametrize("with_batchnorm", [False, True])
def test_smoothmix_equals_the_authors_attack_and_training_step(mix_step, with_batchnorm):
    from smoothsk import smoothmix_loss

    g = torch.Generator().manual_seed(11)
    X = torch.rand(8, 1, 4, 4, generator=g)
    net = conv_net(with_batchnorm)
    with torch.no_grad():
        y = net.eval()(X).argmax(1)
    y[::3] = (y[::3] + 1) % 3  # some examples the smoothed classifier gets wrong
    m, sigma = 2, 0.25
    noises = sigma * torch.randn((m, *X.shape), generator=g)
    lam = torch.rand(len(X), generator=g) / 2
    # η = 2 and a warm-up factor of 0.4: both scale the mixup term differently
    settings = dict(eta=2.0, warmup=0.4, num_steps=3, step_size=0.5, mix_step=mix_step)
    _, parts = smoothmix_loss(net.train(), X, y, sigma, noises=noises, lam=lam,
                              return_parts=True, **settings)
    assert 0 < parts["correct"].sum() < len(X)  # the indicator selects, and matters
    ours = value_and_grads(net, lambda model: smoothmix_loss(model, X, y, sigma, noises=noises,
                                                              lam=lam, **settings))
    theirs = value_and_grads(net, lambda model: _authors_smoothmix_step(
        model, X, y, list(noises), lam, eta=2.0, warmup_v=0.4, steps=3, mix_step=mix_step,
        alpha=0.5, n_classes=3))
    assert_same_value_and_grads(ours, theirs, rtol=1e-4, atol=1e-6)
