"""CRT across architectures: students of other networks distilled from the SmoothMix LeNet.

CRT's claim (Vaishnavi et al., NeurIPS 2022) is that certified robustness transfers to a
student of *another* architecture at a fraction of the teacher's training cost.  This
script retrains the σ = 0.5 SmoothMix LeNet teacher of
``benchmarks/results/fashion-mnist-full-bf16`` (same recipe, seed, precision and data; a
close network, not a bit-identical one), distils the students of ``--students`` from it
with the CRT recipe of ``smoothsk.recipes``, and certifies each student, then the teacher
itself, on the 500 test images of that study (every 20th, n = 10,000, n0 = 100,
α = 0.001, ``random_state=0``) into ``<out>/crt-<student>-sigma0.5-n10000.tsv`` and
``<out>/smoothmix-sigma0.5-n10000.tsv`` (resumable), so that each student is compared
with the teacher it learned from.  Timings go to ``<out>/train-*.json``; models to
``<out>/models`` (not committed).

    python benchmarks/crt_architectures.py --out benchmarks/results/crt-architectures
"""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import harness  # benchmarks/harness.py: parser, --threads
import numpy as np
import reproduce  # benchmarks/reproduce.py: the study's training of the teacher

from smoothsk.datasets import load_fashion_mnist
from smoothsk.io.runs import load_model
from smoothsk.models import MLP, CIFARResNet, LeNet, count_parameters

SIGMA = 0.5

# The students: a network class and its parameters (skorch's ``module__*``).
STUDENTS = {
    "lenet": (LeNet, {}),
    "resnet8": (CIFARResNet, {"depth": 8, "in_channels": 1, "mean": None}),
    "mlp": (MLP, {"in_features": 784, "num_classes": 10, "hidden_units": (1024, 1024)}),
}


# The settings of the committed σ = 0.5 study, as ``reproduce.py``'s arguments.
STUDY_SETTINGS = Namespace(train=60_000, epochs=30, batch_size=None, precision="bf16",
                           channels_last=True, target_draws=1_000)


def train_network(method: str, name: str, teacher, X, y, out: Path):
    """The ``name`` network trained with ``method``'s recipe (``"crt"``: distilled from
    ``teacher``; ``"gaussian"``: Gaussian augmentation, the no-transfer reference)."""
    model_path = out / "models" / f"{method}-{name}-sigma{SIGMA:g}.smoothsk"
    info_path = out / f"train-{method}-{name}-sigma{SIGMA:g}.json"
    if model_path.exists() and info_path.exists():
        return load_model(model_path), json.loads(info_path.read_text())
    network, network_params = STUDENTS[name]
    clf = reproduce.method_estimator(method, SIGMA, STUDY_SETTINGS, teacher, module=network,
                                     **network_params)
    info = reproduce.fit_and_save(clf, X, y, model_path, info_path, {
        "method": method, "student": name, "network": network.__name__,
        "network_params": {k: list(v) if isinstance(v, tuple) else v
                           for k, v in network_params.items()},
        "parameters": count_parameters(network(**network_params)), "sigma": SIGMA,
        "epochs": STUDY_SETTINGS.epochs, "train_size": len(X),
        "precision": STUDY_SETTINGS.precision, "channels_last": STUDY_SETTINGS.channels_last,
        "recipe": f"smoothsk.recipes {method}, mnist family"})
    print(f"trained {method} {name}: {info['seconds']:.0f} s", flush=True)
    return clf, info


def certify(clf, name: str, X_test, y_test, indices, out: Path) -> None:
    reproduce.certify_study_images(
        clf, name, X_test, y_test, indices, out / f"{name}-sigma{SIGMA:g}-n10000.tsv",
        {"method": name, "sigma": SIGMA, "train": 60_000, "epochs": 30})


def main(argv=None):
    parser = harness.parser(__doc__, threads=None)
    parser.add_argument("--out", default="benchmarks/results/crt-architectures")
    parser.add_argument("--root", default=None, help="Fashion-MNIST IDX directory")
    parser.add_argument("--students", default="mlp,resnet8")
    parser.add_argument("--baselines", default="mlp",
                        help="architectures also trained with Gaussian augmentation alone, "
                             "the reference without transfer")
    args = harness.parse(parser, argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    X, y = load_fashion_mnist(args.root, split="train")
    X_test, y_test = load_fashion_mnist(args.root, split="test")
    indices = np.arange(0, len(X_test), 20)[:500]
    teacher, _ = reproduce.train("smoothmix", SIGMA, STUDY_SETTINGS, X, y, out)
    for name in args.students.split(","):
        student, _ = train_network("crt", name, teacher, X, y, out)
        certify(student, f"crt-{name}", X_test, y_test, indices, out)
    # The retrained teacher itself, so that every student is paired with its own teacher.
    certify(teacher, "smoothmix", X_test, y_test, indices, out)
    for name in filter(None, args.baselines.split(",")):
        reference, _ = train_network("gaussian", name, None, X, y, out)
        certify(reference, f"gaussian-{name}", X_test, y_test, indices, out)


if __name__ == "__main__":
    main()
