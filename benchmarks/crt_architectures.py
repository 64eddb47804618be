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
import time
from argparse import Namespace
from pathlib import Path

import harness  # benchmarks/harness.py: parser, --threads
import numpy as np
import reproduce  # benchmarks/reproduce.py: the study's training of the teacher

from smoothsk.datasets import load_fashion_mnist
from smoothsk.io.checkpoint import TrainingCheckpoint
from smoothsk.io.files import atomic_write_text
from smoothsk.io.runs import certify_to_tsv, load_model, save_model
from smoothsk.models import MLP, CIFARResNet, LeNet, count_parameters
from smoothsk.recipes import estimator_class, recipe, recipe_params

SIGMA = 0.5
STUDY = Path("benchmarks/results/fashion-mnist-full-bf16")

# The students: a network class and its parameters (skorch's ``module__*``).
STUDENTS = {
    "lenet": (LeNet, {}),
    "resnet8": (CIFARResNet, {"depth": 8, "in_channels": 1, "mean": None}),
    "mlp": (MLP, {"in_features": 784, "num_classes": 10, "hidden_units": (1024, 1024)}),
}


def study_args(args) -> Namespace:
    """The settings of the committed σ = 0.5 study (``reproduce.py``'s arguments)."""
    return Namespace(train=60_000, epochs=30, batch_size=None, precision="bf16",
                     channels_last=True, target_draws=1_000)


def train_network(method: str, name: str, teacher, X, y, out: Path):
    """The ``name`` network trained with ``method``'s recipe (``"crt"``: distilled from
    ``teacher``; ``"gaussian"``: Gaussian augmentation, the no-transfer reference)."""
    model_path = out / "models" / f"{method}-{name}-sigma{SIGMA:g}.smoothsk"
    info_path = out / f"train-{method}-{name}-sigma{SIGMA:g}.json"
    if model_path.exists() and info_path.exists():
        return load_model(model_path), json.loads(info_path.read_text())
    network, network_params = STUDENTS[name]
    params = recipe_params(recipe(method, "mnist", SIGMA), epochs=30)
    params.update(module=network, random_state=0, verbose=1, precision="bf16",
                  channels_last=True,
                  **{f"module__{key}": value for key, value in network_params.items()})
    if method == "crt":
        params["teacher"] = teacher
    clf = estimator_class(method)(**params)
    checkpoint = out / "models" / f"{method}-{name}-sigma{SIGMA:g}.ckpt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    clf.set_params(callbacks=list(clf.callbacks or [])
                   + [("checkpoint", TrainingCheckpoint(checkpoint))])
    clf.fit(X, y)
    info = {"method": method, "student": name, "network": network.__name__,
            "network_params": {k: list(v) if isinstance(v, tuple) else v
                               for k, v in network_params.items()},
            "parameters": count_parameters(clf.module_), "sigma": SIGMA,
            "seconds": float(sum(clf.history[:, "dur"])), "epochs": 30,
            "train_size": len(X), "precision": "bf16", "channels_last": True,
            "recipe": f"smoothsk.recipes {method}, mnist family"}
    save_model(clf, model_path)
    atomic_write_text(info_path, json.dumps(info, indent=1))
    checkpoint.unlink(missing_ok=True)
    print(f"trained {method} {name}: {info['seconds']:.0f} s", flush=True)
    return clf, info


def certify(clf, name: str, X_test, y_test, indices, out: Path) -> None:
    tsv = out / f"{name}-sigma{SIGMA:g}-n10000.tsv"
    start = time.perf_counter()
    certify_to_tsv(clf, X_test[indices], y_test[indices], indices, tsv,
                   run_info={"method": name, "sigma": SIGMA, "train": 60_000, "epochs": 30},
                   n0=100, n=10_000, alpha=0.001, batch_size=200, random_state=0,
                   rows_per_call=50,
                   progress=lambda rows: print(f"{name}: {rows} images, "
                                               f"{time.perf_counter() - start:.0f} s",
                                               flush=True))


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
    teacher, _ = reproduce.train("smoothmix", SIGMA, study_args(args), X, y, out)
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
