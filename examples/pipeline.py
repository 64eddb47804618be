"""
A Pipeline with a preprocessing step in front of a smoothed classifier
======================================================================

The noise acts on the output of ``StandardScaler``, so the smoothed step's certificate
protects perturbations of the *scaled* features. The scorers and
``smoothsk.metrics.certify_pipeline`` report radii in the pipeline's input space instead:
divided by the scaler's exact l2 Lipschitz constant L = 1 / min_j scale_j, which on digits
(almost constant border pixels) is about 570.

    python examples/pipeline.py
"""

import numpy as np
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from smoothsk import (
    GaussianAugClassifier,
    average_certified_radius,
    certified_accuracy,
    certified_accuracy_scorer,
)
from smoothsk.datasets import load_dataset
from smoothsk.lipschitz import lipschitz_constant
from smoothsk.metrics import certify_pipeline

X_train, y_train = load_dataset("digits", split="train", flat=True)
X_test, y_test = load_dataset("digits", split="test", flat=True)

pipe = make_pipeline(
    StandardScaler(),
    # standardized features are not in [0, 1]: input_range=None declares that the smoothed
    # step takes any values (its radii are in the scaled space, as said above)
    GaussianAugClassifier(sigma=0.5, input_range=None, max_epochs=30, lr=0.05,
                          optimizer=torch.optim.SGD, optimizer__momentum=0.9,
                          batch_size=64, n0=100, n=10_000, random_state=0),
)
pipe.fit(X_train, y_train)
print(f"smoothed accuracy (predict): {pipe.score(X_test, y_test):.3f}")

# Certify in the smoothed step's input space: transform with the earlier steps first.
scaler, smoothed = pipe[:-1], pipe[-1]
certificate = smoothed.certify(scaler.transform(X_test))
radii = [0.0, 0.25, 0.5, 1.0]
for r, acc in zip(radii, certified_accuracy(y_test, certificate, radii)):
    print(f"certified accuracy at r={r:<4} (scaled space): {acc:.3f}")
print(f"ACR (scaled space): {average_certified_radius(y_test, certificate):.3f}")

# Scorers report radii in the pipeline's input space (raw pixels): the scaled-space radius
# divided by the scaler's exact Lipschitz constant L. radius_space="last_step" keeps the
# smoothed step's space.
scorer = certified_accuracy_scorer(0.5, radius_space="last_step")
print(f"certified accuracy at r=0.5 in the scaled space: {scorer(pipe, X_test, y_test):.3f}")
constant = lipschitz_constant(pipe, X_test.shape[1])
raw = certify_pipeline(pipe, X_test)
print(f"L = {constant:.1f}; ACR in raw pixels: {average_certified_radius(y_test, raw):.4f}")

# What a scaled-space radius means for raw pixels (zero-variance pixels have scale 1).
scale = scaler[-1].scale_
print(f"raw-space radius covered by a scaled-space radius of 0.5: {0.5 * scale.min():.4f} "
      f"(smallest feature scale {scale.min():.4f})")
assert np.isclose(scorer(pipe, X_test, y_test),
                  smoothed.certify_radius(scaler.transform(X_test), 0.5, y=y_test)
                  .is_correct(y_test).mean())
