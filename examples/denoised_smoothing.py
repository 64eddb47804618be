"""
Certify a classifier you already have: denoised smoothing
=========================================================

A scikit-learn ``MLPClassifier`` trained on clean digits is certified as is (its own
``predict`` votes on noisy inputs), then with a denoiser trained in front of it
(Salman et al., NeurIPS 2020). The classifier is never modified.

    python examples/denoised_smoothing.py
"""

from sklearn.neural_network import MLPClassifier

from smoothsk import DenoisedSmoothingClassifier, certified_accuracy, certify
from smoothsk.datasets import load_dataset

X_train, y_train = load_dataset("digits", split="train", flat=True)
X_test, y_test = load_dataset("digits", split="test", flat=True)
classifier = MLPClassifier(hidden_layer_sizes=(256,), max_iter=300, random_state=0)
classifier.fit(X_train, y_train)

sigma = 0.5
bare = certify(classifier, X_test, sigma, n=1000, random_state=0)
denoised = DenoisedSmoothingClassifier(classifier, sigma=sigma, n=1000, random_state=0)
denoised.fit(X_train, y_train)
with_denoiser = denoised.certify(X_test)

for radius in (0.0, 0.25, 0.5):
    print(f"r = {radius}: bare {certified_accuracy(y_test, bare, radius):.3f}, "
          f"with an MSE denoiser {certified_accuracy(y_test, with_denoiser, radius):.3f}")
