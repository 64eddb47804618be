import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

# Estimator settings the test modules share (``from conftest import ...``), by how much
# training a test needs: one epoch of a tiny network, two SGD epochs, eight SGD epochs.
TINY_FIT = dict(max_epochs=1, module__hidden_units=(16,), n0=10, n=20, n_predict=10,
                random_state=0)
SHORT_FIT = dict(max_epochs=2, optimizer=torch.optim.SGD, lr=0.05, batch_size=64, n0=32,
                 n=200, n_predict=50, random_state=0)
SGD_FIT = dict(max_epochs=8, lr=0.05, optimizer=torch.optim.SGD, optimizer__momentum=0.9,
               batch_size=64, n0=32, n=300, n_predict=100, random_state=0)

torch.set_num_threads(min(2, torch.get_num_threads()))


class LinearBinary(torch.nn.Module):
    """``sign(w·x + b)`` as a two-logit network: logits ``(−s, s)`` with ``s = w·x + b``.

    Its smoothed classifier is known in closed form: ``p_A = Φ(|w·x + b| / (σ‖w‖))``,
    and the true robust radius of ``g`` at ``x`` is ``|w·x + b| / ‖w‖``.
    """

    def __init__(self, w, b):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float32))
        self.b = torch.nn.Parameter(torch.as_tensor(float(b)))

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([-s, s], dim=1)

    def _score(self, X):
        w = self.w.detach().numpy().astype(np.float64)
        flat = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
        return flat @ w + float(self.b.detach()), np.linalg.norm(w)

    def true_radius(self, X):
        score, norm = self._score(X)
        return np.abs(score) / norm

    def true_class(self, X):
        return (self._score(X)[0] > 0).astype(int)


def points_at_radii(model, radii, rng):
    """Points whose distance to ``model``'s hyperplane is exactly ``radii`` (random side and
    position along the hyperplane)."""
    w = model.w.detach().numpy().astype(np.float64)
    b = float(model.b.detach())
    u = w / np.linalg.norm(w)
    base = rng.normal(size=(len(radii), len(w)))
    base -= np.outer(base @ u + b / np.linalg.norm(w), u)  # project onto the hyperplane
    side = rng.choice([-1.0, 1.0], size=len(radii))
    return (base + (side * radii)[:, None] * u).astype(np.float32)


@pytest.fixture(scope="session")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


# ------------------------------------------------- transcriptions of published losses
def conv_net(with_batchnorm: bool, classes: int = 3) -> torch.nn.Module:
    """A seeded 4×4-image network, with BatchNorm where the pass structure matters."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(1, 4, 3, padding=1)]
    if with_batchnorm:
        layers.append(torch.nn.BatchNorm2d(4))
    layers += [torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, classes)]
    return torch.nn.Sequential(*layers)


def value_and_grads(net, loss_fn):
    """Loss value and parameter gradients of ``loss_fn`` on a fresh copy in training mode
    (a loss returned with extras, ``(loss, ...)``, is unpacked)."""
    import copy

    net = copy.deepcopy(net)
    net.train()
    loss = loss_fn(net)
    loss = loss[0] if isinstance(loss, tuple) else loss
    return loss.detach(), torch.autograd.grad(loss, list(net.parameters()))


def assert_same_value_and_grads(ours, theirs, rtol=1e-5, atol=1e-6):
    """Our loss equals the transcription's in value and in every parameter gradient."""
    torch.testing.assert_close(ours[0], theirs[0], rtol=rtol, atol=atol)
    for mine, published in zip(ours[1], theirs[1]):
        torch.testing.assert_close(mine, published, rtol=rtol, atol=atol)


@pytest.fixture
def small_net():
    """A seeded linear network on 3×2×2 inputs with 4 classes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))


@pytest.fixture
def small_X():
    return np.random.default_rng(0).uniform(size=(23, 3, 2, 2)).astype(np.float32)
