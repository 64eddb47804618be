"""Smoothed LeNet ensembles on Fashion-MNIST against their best member, on the same images.

At σ = 0.5, ``--members`` LeNets per method (the committed MNIST-family recipes of
``smoothsk.recipes``, as ``benchmarks/reproduce.py`` trains them, seeds 0…k−1) are
trained on the whole training set and certified one by one, and as soft-voting
``SmoothedEnsembleClassifier``s of their first 3 and all 5; one mixed ensemble takes
Gaussian seeds 0 and 1 and Consistency seed 0.  Every certificate is
CERTIFY (n0 = 100, ``--n`` draws, α = 0.001, seed 0) of the study's test images (every
20th, 500) into a resumable TSV (``smoothsk.io.runs.certify_to_tsv``), so the runs are
paired: an ensemble's gain over its best member is a mean of per-image differences with
its standard error (``smoothsk.io.study.paired_gain``).  K-consensus (K = 2) of the
5-member Gaussian ensemble is certified on the first ``--consensus-images`` images, with
its member evaluations per draw against the 5 of plain soft voting.

Split over processes with ``--part`` (each trains and certifies only its own models;
finished pieces are reused), then ``--part report`` writes ``ensemble-fmnist.json`` and
``ensemble-fmnist.md`` from the TSVs.  Models go to ``<out>/models`` (not committed).

    python benchmarks/ensemble_fmnist.py --part gaussian --threads 1 &
    python benchmarks/ensemble_fmnist.py --part consistency --threads 1 &
    python benchmarks/ensemble_fmnist.py --part report
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import harness  # benchmarks/harness.py: parser, --threads, machine record
import numpy as np
from reproduce import certify_study_images, fit_and_save, method_estimator, weights_digest

from smoothsk import SmoothedEnsembleClassifier
from smoothsk.datasets import load_fashion_mnist
from smoothsk.io.files import atomic_write_text
from smoothsk.io.report import read_certification_tsv
from smoothsk.io.runs import count_complete_rows, load_model
from smoothsk.io.study import grid_hits, paired_gain

SIGMA = 0.5
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
MIXED = (("gaussian", 0), ("consistency", 0), ("gaussian", 1))


def member(method: str, seed: int, args, X, y):
    """The fitted member (trained here once, then loaded from ``<out>/models``); a
    member of another part's method is waited for, never trained twice."""
    path = args.out / "models" / f"{method}-seed{seed}.smoothsk"
    info_path = args.out / f"train-{method}-seed{seed}.json"
    while method != args.part and not info_path.exists():
        time.sleep(60)
    if path.exists() and info_path.exists():
        return load_model(path)
    clf = method_estimator(method, SIGMA, args).set_params(random_state=seed)
    info = fit_and_save(clf, X, y, path, info_path, {
        "method": method, "sigma": SIGMA, "seed": seed, "epochs": args.epochs,
        "train_size": len(X), "precision": args.precision,
        "recipe": "smoothsk.recipes, mnist family"})
    print(f"trained {method} seed {seed}: {info['seconds']:.0f} s", flush=True)
    return clf


def certify_run(name: str, clf, args, X_test, y_test, indices, run_info: dict) -> None:
    certify_study_images(clf, name, X_test, y_test, indices, args.out / f"{name}.tsv",
                         {"sigma": SIGMA, **run_info}, n=args.n)


def ensemble(members: list, consensus=None, precision="fp32") -> SmoothedEnsembleClassifier:
    return SmoothedEnsembleClassifier(
        [(f"m{i}", m) for i, m in enumerate(members)], prefit=True, consensus=consensus,
        precision=precision).fit(np.zeros((1, 1, 28, 28), np.float32))  # nothing is trained


def run_part(args) -> None:
    """Train and certify the first 3 members and their ensemble before the other members
    (a run cut short still gives the 3-member comparison); the Gaussian part then adds the
    mixed ensemble and K-consensus."""
    X, y = load_fashion_mnist(args.root, split="train")
    X_test, y_test = load_fashion_mnist(args.root, split="test")
    indices = np.arange(0, len(X_test), 20)[: args.images]
    method = args.part
    fitted = []
    for k in ensemble_sizes(args):
        for seed in range(len(fitted), k):
            fitted.append(member(method, seed, args, X, y))
            certify_run(f"{method}-seed{seed}", fitted[-1], args, X_test, y_test, indices,
                        {"method": method, "seed": seed,
                         "weights_sha256": weights_digest(fitted[-1])})
        certify_run(f"{method}-ensemble{k}", ensemble(fitted[:k], precision=args.precision),
                    args, X_test, y_test, indices,
                    {"members": [weights_digest(m) for m in fitted[:k]]})
        if method == "gaussian" and k == 3:
            mixed = [member(m, s, args, X, y) for m, s in MIXED]
            certify_run("mixed-ensemble3", ensemble(mixed, precision=args.precision), args,
                        X_test, y_test, indices, {"members": [weights_digest(m) for m in mixed]})
    if method == "gaussian":
        consensus = ensemble(fitted, consensus=2, precision=args.precision)
        name = consensus_run(len(fitted))
        network = consensus.classifier_network_
        rows_before, evaluations_before = count_complete_rows(args.out / f"{name}.tsv"), \
            network.member_rows  # a resumed run; the rows fit checked
        certify_run(name, consensus, args, X_test, y_test, indices[: args.consensus_images],
                    {"members": [weights_digest(m) for m in fitted], "consensus": 2})
        # the cost of the rows this process certified (a resumed run counts only those)
        images = count_complete_rows(args.out / f"{name}.tsv") - rows_before
        if images:
            draws = images * (100 + args.n)
            evaluations = network.member_rows - evaluations_before
            atomic_write_text(args.out / "consensus-cost.json", json.dumps(
                {"images": images, "draws": draws, "member_rows": int(evaluations),
                 "member_evaluations_per_draw": evaluations / draws,
                 "without_consensus": len(fitted)}, indent=1))


def consensus_run(members: int) -> str:
    """The TSV stem of K = 2 consensus over the first ``members`` Gaussian members."""
    return f"gaussian-ensemble{members}-consensus2"


def ensemble_sizes(args) -> tuple[int, int]:
    """The ensembles of each method: its first 3 members, then all of them."""
    return 3, args.members


def summary(run) -> dict:
    return {"images": len(run.idx), "acr": round(run.average_certified_radius, 4),
            "certified_accuracy": {f"{r:g}": round(float(a), 4)
                                   for r, a in zip(RADII, run.certified_accuracy(RADII))}}


def report(args) -> None:
    """``ensemble-fmnist.json`` and ``.md``: each finished ensemble against its best member
    (highest ACR) on the same images — the ACR gain and the certified-accuracy differences
    at ``RADII``, each the mean of per-image differences ± their standard error."""
    runs = {}
    for path in sorted(args.out.glob("*.tsv")):
        if count_complete_rows(path):  # a run just started has none yet
            runs[path.stem] = read_certification_tsv(path)
    groups = {f"{m}-ensemble{k}": [f"{m}-seed{s}" for s in range(k)]
              for m in ("gaussian", "consistency") for k in ensemble_sizes(args)}
    groups["mixed-ensemble3"] = [f"{m}-seed{s}" for m, s in MIXED]
    acr_lines = ["| ensemble | images | best member | best member ACR | ensemble ACR | "
                 "gain (paired) |", "|---|---|---|---|---|---|"]
    radii = RADII[1:]
    accuracy_lines = ["| ensemble | " + " | ".join(f"r={r:g}" for r in radii) + " |",
                      "|---|" + "---|" * len(radii)]
    comparisons = {}
    for name, names in groups.items():
        if name not in runs or any(n not in runs for n in names) or \
                any(not np.array_equal(runs[n].idx, runs[name].idx) for n in names):
            continue  # not finished on the same images yet
        best = max(names, key=lambda n: runs[n].average_certified_radius)
        gain, se, k = paired_gain(runs[best], runs[name])
        base = runs[best].average_certified_radius
        best_hits = grid_hits(runs[best], radii)
        hits = grid_hits(runs[name], radii) - best_hits
        hit_se = hits.std(axis=0, ddof=1) / np.sqrt(k)
        member_accuracy = best_hits.mean(axis=0)
        comparisons[name] = {
            "members": names, "best_member": best, "images": k, "gain": round(gain, 4),
            "se": round(se, 4), "relative": round(gain / base, 4),
            "certified_accuracy_gain": {f"{r:g}": [round(float(d), 4), round(float(e), 4)]
                                        for r, d, e in zip(radii, hits.mean(axis=0), hit_se)}}
        acr_lines.append(f"| `{name}` | {k} | `{best}` | {base:.3f} | "
                         f"{runs[name].average_certified_radius:.3f} | "
                         f"{gain:+.3f} ± {se:.3f} ({gain / base:+.1%}) |")
        accuracy_lines.append(f"| `{name}` | " + " | ".join(
            f"{100 * a:.1f} → {100 * (a + d):.1f} ({100 * d:+.1f} ± {100 * e:.1f})"
            for a, d, e in zip(member_accuracy, hits.mean(axis=0), hit_se)) + " |")
    cost_path = args.out / "consensus-cost.json"
    cost = json.loads(cost_path.read_text()) if cost_path.exists() else None
    consensus_lines = []
    plain, agreed = f"gaussian-ensemble{args.members}", consensus_run(args.members)
    if cost and plain in runs and agreed in runs:
        # K-consensus changes the base classifier (the agreed class where the first K
        # agree), so its certificates are compared with plain soft voting's, paired
        difference, se, k = paired_gain(runs[plain], runs[agreed])
        cost.update(images_compared=k, acr_difference=round(difference, 4), se=round(se, 4))
        consensus_lines = [
            "| ensemble | images | member evaluations per draw | soft voting ACR | "
            "K = 2 consensus ACR | difference (paired) |", "|---|---|---|---|---|---|",
            f"| `{agreed}` | {k} | {cost['member_evaluations_per_draw']:.2f} of "
            f"{cost['without_consensus']} | "
            # soft voting on the consensus run's images (a prefix of its own)
            f"{runs[agreed].average_certified_radius - difference:.3f} | "
            f"{runs[agreed].average_certified_radius:.3f} | {difference:+.4f} ± {se:.4f} |"]
    result = {"sigma": SIGMA, "n": args.n, "alpha": 0.001,
              "runs": {name: summary(run) for name, run in runs.items()},
              "comparisons": comparisons, "consensus": cost, "machine": harness.machine()}
    atomic_write_text(args.out / "ensemble-fmnist.json", json.dumps(result, indent=1))
    text = "\n".join(acr_lines) + "\n\n" + "\n".join(accuracy_lines) + "\n"
    if consensus_lines:
        text += "\n" + "\n".join(consensus_lines) + "\n"
    atomic_write_text(args.out / "ensemble-fmnist.md", text)
    print(text)


def main(argv=None):
    parser = harness.parser(__doc__, threads=1)
    parser.add_argument("--part", required=True,
                        choices=["gaussian", "consistency", "report"])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "ensemble-fmnist")
    parser.add_argument("--root", default=None, help="Fashion-MNIST IDX directory")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=500,
                        help="the first this many of the study's 500 images (every 20th); "
                             "a later run with more extends every TSV")
    parser.add_argument("--consensus-images", type=int, default=100)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = harness.parse(parser, argv)
    # what reproduce.method_estimator reads besides these
    args = argparse.Namespace(**vars(args), batch_size=None, channels_last=False,
                              target_draws=None)
    args.out.mkdir(parents=True, exist_ok=True)
    report(args) if args.part == "report" else run_part(args)


if __name__ == "__main__":
    main()
