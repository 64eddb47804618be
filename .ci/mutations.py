"""Mutation check: each published ingredient, changed in a copy of the package, must make
the tests that guard it fail.

A test that passes when the formula is changed is not a test.  Each row below changes
one ingredient of a method (a published constant, a detach, a mode, a distribution) in a
temporary copy of ``smoothsk/`` and runs the tests named in the row against that copy;
the row passes when they fail.  The unmutated copy must pass the same tests first.

    python .ci/mutations.py            # every row
    python .ci/mutations.py macer      # rows whose name contains "macer"

A new method's tests are held to the same standard by adding its rows here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORMULAS = "tests/methods/test_published_formulas.py"

# (name, file, original text, mutated text, tests that must fail)
MUTATIONS = [
    ("macer: β dropped from the tempered softmax", "smoothsk/methods/macer.py",
     "F.softmax(inverse_temperature * logits", "F.softmax(logits", [FORMULAS]),
    ("macer: β dividing instead of multiplying", "smoothsk/methods/macer.py",
     "F.softmax(inverse_temperature * logits", "F.softmax(logits / inverse_temperature",
     [FORMULAS]),
    ("macer: hinge selecting gap <= γ/2", "smoothsk/methods/macer.py",
     "(gap <= margin)", "(gap <= margin / 2)", [FORMULAS]),
    ("smoothmix: η without its warm-up factor", "smoothsk/methods/smoothmix.py",
     "loss = cross_entropy + eta * warmup * mixup", "loss = cross_entropy + eta * mixup",
     [FORMULAS]),
    ("smoothmix: F̂(x) detached", "smoothsk/methods/smoothmix.py",
     "soft_target = F.softmax(logits, dim=1).view(m, len(X), -1).mean(dim=0)",
     "soft_target = F.softmax(logits, dim=1).view(m, len(X), -1).mean(dim=0).detach()",
     [FORMULAS]),
    ("smoothmix: one-step radius without warm-up", "smoothsk/methods/smoothmix.py",
     "if mix_radius is None else mix_radius) * warmup",
     "if mix_radius is None else mix_radius)", [FORMULAS]),
    ("catrs: K = round(m·w) instead of Binomial(m, w)", "smoothsk/methods/catrs.py",
     "accept = torch.distributions.Binomial(m, probs=confidence.detach().float()).sample()",
     "accept = torch.round(m * confidence.detach().float())", ["tests/methods/test_catrs.py"]),
    ("denoised: stability target from the noisy input", "smoothsk/methods/denoised.py",
     "y = classifier(X).argmax(dim=1)", "y = classifier(noisy).argmax(dim=1)",
     ["tests/methods/test_denoised.py"]),
    ("dncnn: default BatchNorm settings", "smoothsk/models.py",
     "nn.BatchNorm2d(width, eps=1e-4, momentum=0.95)", "nn.BatchNorm2d(width)",
     ["tests/test_datasets_models.py"]),
    ("crt: teacher run in training mode", "smoothsk/methods/crt.py",
     "with frozen(teacher), torch.no_grad():", "with torch.no_grad():",
     ["tests/methods/test_crt.py"]),
    ("discrete noise: thresholds of a 10 % wider Gaussian", "smoothsk/certification/noise.py",
     "self.scale = Fraction(self.sigma) / step",
     "self.scale = Fraction(self.sigma) / step * 11 / 10",
     ["tests/certification/test_discrete_noise.py"]),
    ("discrete noise: far-tail buckets read as if they held one threshold",
     "smoothsk/certification/noise.py", "            if len(tails):",
     "            if False:", ["tests/certification/test_discrete_noise.py"]),
    ("discrete noise: network sees lattice coordinates, not inputs",
     "smoothsk/certification/sampling.py",
     "batch = self.lattice.from_lattice(batch, self.dtype)", "batch = batch.to(self.dtype)",
     ["tests/certification/test_discrete_noise.py"]),
    ("incremental: fallback on the original certificate's draws",
     "smoothsk/certification/incremental.py", "random_state=_fresh_seed(random_state)",
     "random_state=random_state", ["tests/certification/test_incremental.py"]),
    ("incremental: fallback at α + α_ζ", "smoothsk/certification/incremental.py",
     "n=certificate.n, alpha=alpha_zeta,", "n=certificate.n, alpha=alpha,",
     ["tests/certification/test_incremental.py"]),
    ("incremental: path chosen after the disagreement draws",
     "smoothsk/certification/incremental.py", "fallback = np.flatnonzero(~cheap)",
     "fallback = np.flatnonzero(~certified)", ["tests/certification/test_incremental.py"]),
    ("incremental: recorded votes replayed against other draws",
     "smoothsk/certification/incremental.py", "original.classes[cheap].ravel()",
     "original.classes[cheap].T.ravel()", ["tests/certification/test_incremental.py"]),
]


def run_tests(copy: Path, tests: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(copy), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
         "-m", "not slow and not subprocess", *tests],
        cwd=copy, env=env, capture_output=True, text=True, timeout=900)


def make_copy() -> Path:
    copy = Path(tempfile.mkdtemp(prefix="smoothsk-mutation-"))
    shutil.copytree(ROOT / "smoothsk", copy / "smoothsk",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    probe = subprocess.run([sys.executable, "-c", "import smoothsk; print(smoothsk.__file__)"],
                           cwd=copy, env=dict(os.environ, PYTHONPATH=str(copy)),
                           capture_output=True, text=True)
    if not probe.stdout.strip().startswith(str(copy)):
        raise SystemExit(f"the copy is not the package imported: {probe.stdout}{probe.stderr}")
    return copy


def main(argv: list[str]) -> int:
    rows = [row for row in MUTATIONS if not argv or any(a in row[0] for a in argv)]
    copy = make_copy()
    try:
        tests = sorted({t for row in rows for t in row[4]})
        baseline = run_tests(copy, tests)
        if baseline.returncode != 0:
            print(baseline.stdout[-3000:], baseline.stderr[-2000:])
            print("the unmutated copy fails its tests: nothing to check")
            return 1
        survivors = []
        for name, file, original, mutated, guarded_by in rows:
            path = copy / file
            text = path.read_text(encoding="utf-8")
            if text.count(original) != 1:
                print(f"{name}: the original text is not found once in {file}; update the row")
                survivors.append(name)
                continue
            path.write_text(text.replace(original, mutated), encoding="utf-8")
            start = time.perf_counter()
            try:
                result = run_tests(copy, guarded_by)
            finally:
                path.write_text(text, encoding="utf-8")
            caught = result.returncode != 0
            failed = [line.split(" - ")[0].removeprefix("FAILED ")
                      for line in result.stdout.splitlines() if line.startswith("FAILED")]
            by = f" by {failed[0]}" if failed else ""
            print(f"{'caught ' if caught else 'MISSED '} {name}{by} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            if not caught:
                survivors.append(name)
        print(f"{len(rows) - len(survivors)} of {len(rows)} mutations caught")
        return 1 if survivors else 0
    finally:
        shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
