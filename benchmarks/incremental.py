"""Incremental certification of modified copies against certifying each from scratch.

A Gaussian-augmentation LeNet on Fashion-MNIST (``--model``: a smoothsk model file; by
default one is trained here at σ = 0.5) is certified once with CERTIFY (n0 = 100,
``--n`` draws, α = 0.001).  Each modified copy is then certified on the same test images,
with the same seed, one after the other in this process (each timed call after an
untimed one on one image, so that no run pays the kernels' one-off set-up):

- from scratch: ``certify`` of the copy (n0 + n draws through the copy);
- incrementally: ``certify_incremental`` from the original's certificate (n_ζ draws
  through both networks, CERTIFY of the copy where the incremental bound leaves nothing),
  at total level α + α_ζ, once with ``recertify_above=0.99`` (the authors' γ: inputs
  whose original p̲_A reaches it are certified from scratch) and once without;
- with ``--recorded``, also incrementally from the original's recorded votes
  (``record_votes`` once per image set, then only the copy runs on the n_ζ draws; the
  recording's time is reported on its own: it is paid once for every copy).

The copies: the fp32 estimator at bf16 (the estimator-level
``clf_bf16.certify_incremental(X, clf, certificate)``), an int8 copy (torch's dynamic
quantization of the linear layers: ``torch.ao.quantization.quantize_dynamic``, the
quantization path torch runs on a CPU without calibration data; the convolutions stay
fp32) and a pruned copy (30 % of each layer's weights with the smallest magnitude set to
zero, ``torch.nn.utils.prune.l1_unstructured``).  Reports the speed-up, certified accuracy
and ACR of both certificates, the mean disagreement rate ζ and how many inputs fell back.

    python benchmarks/incremental.py [--model M.smoothsk] [--images 500] [--n 10000]
        [--n-zeta 1000] [--bf16-images 100] [--copies bf16,int8,pruned] [--recorded]
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time

import harness  # benchmarks/harness.py: parser, --threads, machine record
import numpy as np
import torch

from smoothsk import (
    ABSTAIN,
    GaussianAugClassifier,
    average_certified_radius,
    certified_accuracy,
    certify,
    certify_incremental,
    record_votes,
)
from smoothsk.certification.precision import cpu_has_native_bf16
from smoothsk.datasets import load_dataset
from smoothsk.io.model_file import load_model
from smoothsk.models import LeNet

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
# recertify_above: the authors' γ, and the cheap path for every input it can certify
GAMMAS = (0.99, None)


def _summary(certificate, y) -> dict:
    return {"acr": round(float(average_certified_radius(y, certificate)), 4),
            "certified_accuracy": {f"{r:g}": round(float(a), 4) for r, a in
                                   zip(RADII, certified_accuracy(y, certificate, RADII))}}


def _first_rows(certificate, k: int):
    """The certificate of the first ``k`` inputs (each input's draws are seeded by its
    index, so this is the certificate ``certify(X[:k])`` gives)."""
    rows = len(certificate)
    return dataclasses.replace(certificate, **{
        f.name: getattr(certificate, f.name)[:k] for f in dataclasses.fields(certificate)
        if isinstance(getattr(certificate, f.name), np.ndarray)
        and len(getattr(certificate, f.name)) == rows and f.name != "classes"})


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def pruned_copy(network: torch.nn.Module, amount: float) -> torch.nn.Module:
    """A copy with ``amount`` of each convolution's and linear layer's weights (the
    smallest in magnitude) set to zero, the pruning made permanent."""
    from torch.nn.utils import prune

    # l1_unstructured views the weights flat: a channels-last network is pruned in the
    # contiguous layout and given its layout back
    layouts = {p.dim() == 4 and not p.is_contiguous() for p in network.parameters()}
    pruned = copy.deepcopy(network).to(memory_format=torch.contiguous_format)
    for module in pruned.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            prune.l1_unstructured(module, "weight", amount=amount)
            prune.remove(module, "weight")
    if True in layouts:
        pruned = pruned.to(memory_format=torch.channels_last)
    return pruned.eval()


def int8_copy(network: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of the linear layers (weights int8, activations
    quantized per batch), the CPU path that needs no calibration data."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(network).cpu().eval(), {torch.nn.Linear},
                            dtype=torch.qint8)


def main(argv=None):
    parser = harness.parser(__doc__, threads=1, out="benchmarks/results/incremental.json")
    parser.add_argument("--model", default=None,
                        help="a Fashion-MNIST LeNet model file (default: train one)")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=5,
                        help="epochs of the model trained here without --model")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--bf16-images", type=int, default=100,
                        help="images for the bf16 copy (emulated bf16 is slow on CPUs "
                             "without native bf16)")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--n-zeta", type=int, default=1_000)
    parser.add_argument("--copies", default="bf16,int8,pruned",
                        help="comma-separated copies to certify (bf16, int8, pruned)")
    parser.add_argument("--recorded", action="store_true",
                        help="also certify each copy from the original's recorded votes")
    args = harness.parse(parser, argv)
    copies = args.copies.split(",")
    if not set(copies) <= {"bf16", "int8", "pruned"}:
        parser.error(f"--copies takes bf16, int8 and pruned; got {args.copies}")
    Xt, yt = load_dataset("fashion-mnist", split="test")
    if args.model:
        clf = load_model(args.model).set_params(precision="fp32")  # its bf16 copy is a row
        trained = args.model
    else:
        X, y = load_dataset("fashion-mnist", split="train")
        clf = GaussianAugClassifier(module=LeNet, sigma=args.sigma, max_epochs=args.epochs,
                                    random_state=0).fit(X, y)
        trained = f"GaussianAugClassifier(LeNet, sigma={args.sigma}), {args.epochs} epochs"
    sigma = float(clf.noise_level)
    settings = dict(n0=100, n=args.n, alpha=0.001, batch_size=1000, random_state=1)
    rows = []

    # the original is certified once, on the most images any copy uses
    first = max(args.images, args.bf16_images)
    # every timed call follows an untimed one on one image of the same arithmetic: the
    # first forward passes of a precision pay one-off kernel set-up, which would otherwise
    # fall on whichever run came first
    clf.certify(Xt[:1], **settings)
    certified, seconds_certified = _timed(lambda: clf.certify(Xt[:first], **settings))

    def compare(name, images, scratch, incremental):
        X, y = Xt[:images], yt[:images]
        original = _first_rows(certified, images)
        seconds_original = seconds_certified * images / first
        scratch(X[:1])
        plain, seconds_plain = _timed(lambda: scratch(X))
        references = [("original network", clf, None)]
        if args.recorded:
            votes, seconds_recording = _timed(lambda: record_votes(
                clf, X, original, n_zeta=args.n_zeta, batch_size=1000, random_state=1))
            references.append(("recorded votes", votes, seconds_recording))
        for (reference, model, seconds_recording), gamma in itertools.product(references,
                                                                              GAMMAS):
            fast, seconds_fast = _timed(
                lambda gamma=gamma, model=model: incremental(X, original, gamma, model))
            draws = np.asarray(fast.samples)
            kept = draws == args.n_zeta
            zeta = fast.disagreements[kept] / args.n_zeta  # observed ζ where compared
            zeta_bound = original.pa_lower[kept] - fast.pa_lower[kept]  # the ζ̄ used
            seconds = {"original (pro rata)": round(seconds_original, 1),
                       "from_scratch": round(seconds_plain, 1),
                       "incremental": round(seconds_fast, 1)}
            if seconds_recording is not None:
                seconds["recording (once for all copies)"] = round(seconds_recording, 1)
            rows.append({"copy": name, "images": images, "recertify_above": gamma,
                         "from": reference, "seconds": seconds,
                         "speedup": round(seconds_plain / seconds_fast, 2),
                         "from_scratch": _summary(plain, y), "incremental": _summary(fast, y),
                         "original": _summary(original, y),
                         "recertified_inputs": int((draws > args.n_zeta).sum()),
                         "abstained_on_cheap_path":
                             int((kept & (fast.prediction == ABSTAIN)).sum()),
                         "mean_zeta": round(float(zeta.mean()), 5) if kept.any() else None,
                         "mean_zeta_bound": round(float(zeta_bound.mean()), 5)
                         if kept.any() else None,
                         "alpha_total": fast.alpha})
            print(rows[-1], flush=True)

    bf16 = copy.deepcopy(clf).set_params(precision="bf16")
    if "bf16" in copies:
        compare("bf16", args.bf16_images,
                lambda X: bf16.certify(X, **settings),
                lambda X, cert, gamma, reference: bf16.certify_incremental(
                    X, reference, cert, n_zeta=args.n_zeta, recertify_above=gamma,
                    batch_size=1000, random_state=1))
    others = {"int8": ("int8 (dynamic, linear layers)", int8_copy),
              "pruned": ("pruned 30 %", lambda network: pruned_copy(network, 0.3))}
    for key in (c for c in copies if c != "bf16"):
        name, network = others[key][0], others[key][1](clf.module_)
        compare(name, args.images,
                lambda X, network=network: certify(network, X, sigma, **settings),
                lambda X, cert, gamma, reference, network=network: certify_incremental(
                    network, reference, X, cert, n_zeta=args.n_zeta, recertify_above=gamma,
                    batch_size=1000, random_state=1))
    harness.write_json(args.out, {"model": trained, "sigma": sigma, "n": args.n,
                                  "n_zeta": args.n_zeta, "alpha": 0.001, "alpha_zeta": 0.001,
                                  "native_bf16": cpu_has_native_bf16(),
                                  "machine": harness.machine(), "rows": rows})


if __name__ == "__main__":
    main()
