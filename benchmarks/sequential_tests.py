"""Draws of the two fixed-radius sequential tests, side by side on the same draws.

``certify_radius`` decides "certified at r?" with ``test="rounds"`` (Clopper–Pearson at
α/K after each of K rounds) or ``test="betting"`` (a betting confidence sequence).  Their
decisions depend on the network only through the stream of votes for the selected
class, so this benchmark replays that stream: each input's ``p_A`` is recovered from a
committed whole-budget CERTIFY run (``radius = σ Φ⁻¹(p̲_A)`` at n = 100,000 inverts to
the vote share behind the bound), and both tests read the *same* simulated Bernoulli
draws, many times per input.  Reported per radius: mean estimation draws of each test,
their ratio, the share of decisions that agree, and the direction of every disagreement.
Inputs that CERTIFY abstained on or got wrong are given ``p = 0.45`` for the label
(they are stopped for futility by both tests; with ``y`` most draw nothing at all).

    python benchmarks/sequential_tests.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import norm

from smoothsk.certification.adaptive import DEFAULT_GROWTH, TESTS, decision_rule, round_sizes
from smoothsk.certification.bounds import lower_confidence_bound
from smoothsk.io.files import atomic_write_text
from smoothsk.io.report import read_certification_tsv

RESULTS = Path(__file__).parent / "results"
RUNS = RESULTS / "fashion-mnist-full-bf16"
FIRST = {"rounds": 64, "betting": 64}  # certify_radius's defaults (first_round, growth)
GROWTH = dict(DEFAULT_GROWTH)


def vote_share(radius: np.ndarray, sigma: float, n: int, alpha: float) -> np.ndarray:
    """The vote share k/n whose Clopper–Pearson lower bound gives ``radius``."""
    target = norm.cdf(radius / sigma)
    low, high = np.zeros(len(target), np.int64), np.full(len(target), n, np.int64)
    while np.any(low < high):  # smallest k with lower bound >= target
        open_ = low < high
        mid = (low + high) // 2
        ok = lower_confidence_bound(mid, n, alpha) >= target
        high, low = np.where(open_ & ok, mid, high), np.where(open_ & ~ok, mid + 1, low)
    return low / n


def decisions(test: str, p_star: float, alpha: float, n: int, looks: np.ndarray,
              votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(certified, draws) of ``test`` reading cumulative ``votes`` (inputs × looks),
    through the decision rule ``certify_radius`` itself uses."""
    sizes = round_sizes(FIRST[test], GROWTH[test], n)
    rule = decision_rule(test, p_star, alpha, sizes)
    count = len(votes)
    certified, draws = np.zeros(count, bool), np.zeros(count, np.int64)
    active = np.full(count, rule.reachable())
    for size, column in zip(sizes, np.searchsorted(looks, sizes)):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        draws[idx] = size
        certified[idx], stop = rule(votes[idx, column], int(size))
        active[idx[stop]] = False
    return certified, draws


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--radii", default="0.25,0.5,1.0")
    parser.add_argument("--betting-first-round", type=int, default=FIRST["betting"])
    parser.add_argument("--betting-growth", type=float, default=GROWTH["betting"])
    parser.add_argument("--out", default=str(RESULTS / "sequential-tests.json"))
    args = parser.parse_args(argv)
    FIRST["betting"], GROWTH["betting"] = args.betting_first_round, args.betting_growth
    rng = np.random.default_rng(0)
    n, alpha = 100_000, 0.001
    looks = np.unique(np.concatenate([round_sizes(FIRST[t], GROWTH[t], n) for t in TESTS]))
    rows = []
    for path in sorted(RUNS.glob("*-sigma0.5-n100000.tsv")):
        run = read_certification_tsv(path)
        sigma = float(run.setting("sigma"))
        p = np.where(run.correct, vote_share(run.radius, sigma, n, alpha), 0.45)
        p = np.repeat(p, args.repeats)
        # one stream of draws per input and repeat, read by both tests at their looks
        increments = rng.binomial(np.diff(looks, prepend=0)[None, :], p[:, None])
        votes = np.cumsum(increments, axis=1)
        for radius in [float(r) for r in args.radii.split(",")]:
            p_star = float(norm.cdf(radius / sigma))
            result = {t: decisions(t, p_star, alpha, n, looks, votes) for t in TESTS}
            (cb, db), (cr, dr) = result["betting"], result["rounds"]
            rows.append({
                "run": path.stem, "sigma": sigma, "radius": radius, "inputs": len(run.radius),
                "repeats": args.repeats,
                "mean_draws_betting": float(db.mean()), "mean_draws_rounds": float(dr.mean()),
                "ratio": float(db.mean() / dr.mean()),
                "agreement": float(np.mean(cb == cr)),
                "only_betting_certifies": int(np.sum(cb & ~cr)),
                "only_rounds_certifies": int(np.sum(cr & ~cb)),
                "certified_share_betting": float(cb.mean()),
                "certified_share_rounds": float(cr.mean()),
            })
            row = rows[-1]
            print(f"{path.stem:32s} r={radius:<5g} draws betting {row['mean_draws_betting']:8.0f}"
                  f" rounds {row['mean_draws_rounds']:8.0f} ratio {row['ratio']:.2f}  "
                  f"agree {100 * row['agreement']:.1f} % (+{row['only_betting_certifies']}"
                  f"/-{row['only_rounds_certifies']})")
    settings = {"n": n, "alpha": alpha, "first_round": FIRST, "growth": GROWTH}
    atomic_write_text(Path(args.out), json.dumps({**settings, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
