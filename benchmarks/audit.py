"""The robustness audit, re-run: every row tried many ways, each try passed or failed.

Rows (each try is one case; a case fails when the library misbehaves, not when it refuses):

- bad invocations: every typed option of every command given a value of the wrong kind
  ("abc", "nan", "1.5" for integers, an unknown choice), each required option left out,
  an unknown option, and hand-written semantic mistakes (``--n 0``, ``--alpha 1.5``,
  ``--set lr=abc``, another method's option, a 10,001-radius grid, a plot suffix matplotlib
  cannot write...).  Passes: exit status 2, one line on stderr that starts with
  ``smoothsk``, no traceback, nothing new written.
- non-finite inputs: NaN, +inf, −inf in ``X`` of ``fit``, ``predict``, ``certify`` (the
  function and the estimator's), ``certify_radius``, ``class_counts``.  Passes: a
  ``ValueError`` that names the problem; fails on silent success or another exception.
- planted files: model files whose document chooses code, commands or paths, pickled
  globals, a document nested 200,000 deep, wrong-typed records, a sidecar of the wrong
  types, a TSV field over 131,072 characters, read through ``load_model`` and the CLI.
  Passes: a one-line refusal and no marker file.
- soundness: CERTIFY on the analytic linear classifier (whose true radius is known),
  1,000 inputs; passes when the violations stay below the binomial tail at α.
- parallel backends: ``certify(n_jobs=2)`` under loky, threading and the sequential
  backend equals the serial certificate; the multiprocessing backend is refused clearly.
- kills: SIGKILL of ``certify --jobs 2`` leaves no process behind; SIGINT at start-up,
  during training and right after a checkpoint exits 130 with one line, ``--out``
  unwritten and the checkpoint kept.
- disk full: ``train``, ``certify`` and ``report`` writing onto a full file system (a
  tmpfs, when run as root): one line, exit 2, nothing half-written.

    python benchmarks/audit.py [--out benchmarks/results/audit.json]
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # benchmarks/harness.py: parser, --threads, machine record, JSON writer
import numpy as np
import torch

from smoothsk.io.files import load_data_only
from smoothsk.testing import process_group_members

SMOOTHSK = str(Path(sys.executable).with_name("smoothsk"))


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    """``smoothsk ARGV`` in this process: (exit status, stderr); an exception that escapes
    is reported as a traceback, as the console script would print it."""
    from smoothsk.cli import main

    err, here = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
            except BaseException as exc:  # noqa: BLE001 - what the user would see
                return 1, f"Traceback: {type(exc).__name__}: {exc}"
    finally:
        os.chdir(here)
    return code, err.getvalue()


def refused_cleanly(code: int, stderr: str, before: set, cwd: Path) -> str | None:
    """None when the refusal is what we promise, else what went wrong."""
    lines = stderr.strip().splitlines()
    if code != 2:
        return f"exit {code}"
    if "Traceback" in stderr:
        return "traceback"
    if len(lines) != 1 or not lines[0].startswith("smoothsk"):
        return f"{len(lines)} lines"
    written = {p for p in cwd.rglob("*")} - before
    if written:
        return f"wrote {sorted(str(p.relative_to(cwd)) for p in written)}"
    return None


def bad_invocations(work: Path, model: Path, tsv: Path) -> list[tuple[str, str | None]]:
    from smoothsk.cli import build_parser
    from smoothsk.methods.registry import ASSEMBLED, METHODS, method_options

    base = {"train": ["train", "--dataset", "digits", "--method", "gaussian", "--out",
                      "new.smoothsk"],
            "certify": ["certify", str(model), "--dataset", "digits", "--out", "new.tsv"],
            "report": ["report", str(tsv)],
            "demo": ["demo", "--out-dir", "demo-out"]}
    owners = {}
    for name, cls in {**METHODS, **ASSEMBLED}.items():
        for option in method_options(cls):
            owners.setdefault(option, name)
    cases = []
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for command, sub in commands.choices.items():
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.dest == "help":
                continue
            flag = action.option_strings[-1]
            argv = list(base[command])
            if command == "train" and action.dest in owners:
                argv[argv.index("--method") + 1] = owners[action.dest]
            if action.choices:
                values = ["bogus"]
            elif action.type is int:
                values = ["abc", "1.5", "nan"]
            elif action.type is float:
                values = ["abc", "nan", "inf"]
            elif action.dest in owners:
                values = ["abc"]
            else:
                continue
            for value in values:
                cases.append((f"{command} {flag} {value}", argv + [flag, value]))
        for action in sub._actions:
            if action.required and action.option_strings:
                argv = list(base[command])
                i = argv.index(action.option_strings[-1])
                cases.append((f"{command} without {action.option_strings[-1]}",
                              argv[:i] + argv[i + 2:]))
        cases.append((f"{command} --bogus", base[command] + ["--bogus"]))
    many = ",".join(str(i / 1000) for i in range(1, 10_002))
    cases += [(" ".join(argv), argv) for argv in [
        base["certify"] + ["--n", "0"], base["certify"] + ["--n0", "0"],
        base["certify"] + ["--alpha", "1.5"], base["certify"] + ["--alpha", "0"],
        base["certify"] + ["--sigma", "-1"], base["certify"] + ["--sigma", "0"],
        base["certify"] + ["--batch-size", "0"], base["certify"] + ["--threads", "0"],
        base["certify"] + ["--max", "0"], base["certify"] + ["--skip", "-1"],
        base["certify"] + ["--radii", "a,b"], base["certify"] + ["--radii", "-1"],
        base["certify"] + ["--max-n", "0"], base["certify"] + ["--jobs", "0"],
        base["certify"] + ["--noise", "discrete-gaussian", "--noise-step", "abc"],
        ["certify", "missing.smoothsk", "--dataset", "digits", "--out", "new.tsv"],
        ["certify", str(tsv), "--dataset", "digits", "--out", "new.tsv"],
        ["certify", str(model), "--dataset", "digits", "--out", str(tsv)],
        ["report", "missing.tsv"], ["report", str(model)],
        base["report"] + ["--plot", "out.jpg"], base["report"] + ["--radii", "x"],
        base["report"] + ["--markdown", "t.md", "--plot", "c.jpg"],
        base["report"] + ["--radii", many], base["report"] + ["--max-radius", "-1"],
        base["train"] + ["--set", "lr=abc"], base["train"] + ["--set", "bogus=1"],
        base["train"] + ["--set", "novalue"], base["train"] + ["--num-noise", "3"],
        base["train"] + ["--momentum", "0.9"], base["train"] + ["--epochs", "0"],
        base["train"] + ["--lr", "-1"], base["train"] + ["--sigma", "0"],
        base["train"] + ["--lr-schedule", "cosine", "--lr-step", "2"],
        base["train"] + ["--members", f"{model},{model}"],
        base["train"] + ["--teacher", str(model)],
        ["train", "--dataset", "digits", "--method", "crt", "--out", "new.smoothsk"],
        ["train", "--dataset", "digits", "--method", "ensemble", "--members", str(model),
         "--out", "new.smoothsk"],
        ["train", "--dataset", "digits", "--method", "ensemble", "--members",
         f"{model},{model}", "--eta", "3", "--out", "new.smoothsk"],
        ["train", "--dataset", "digits", "--method", "gaussian", "--out", str(tsv)],
        ["train", "--dataset", "digits", "--method", "gaussian", "--out", "no/dir/m.smoothsk"],
        base["certify"] + ["--max", "-1"], base["certify"] + ["--n", "-5"],
        base["certify"] + ["--n0", "-1"], base["certify"] + ["--batch-size", "-1"],
        base["certify"] + ["--threads", "-1"], base["certify"] + ["--alpha", "-0.1"],
        base["certify"] + ["--radii", ""], base["certify"] + ["--max-n", "-1"],
        base["report"] + ["--labels", "a,b"], base["report"] + ["--radii", ""],
        base["train"] + ["--max-train", "0"], base["train"] + ["--max-train", "-1"],
        base["train"] + ["--batch-size", "0"], base["train"] + ["--threads", "0"],
        base["train"] + ["--epochs", "-1"], base["train"] + ["--weight-decay", "-1"],
        base["train"] + ["--optimizer", "sgd", "--momentum", "-1"],
        base["train"] + ["--lr-step", "0"], base["train"] + ["--lr-gamma", "-1"],
        base["demo"] + ["--n", "-1"], base["demo"] + ["--epochs", "-1"],
        base["demo"] + ["--epochs", "0"], base["demo"] + ["--n", "0"],
        base["demo"] + ["--sigma", "-1"],
    ]]
    results = []
    for name, argv in cases:
        before = set(work.rglob("*"))
        code, stderr = run_cli(argv, work)
        results.append((name, refused_cleanly(code, stderr, before, work)))
    return results


def non_finite_inputs(clf, X) -> list[tuple[str, str | None]]:
    import smoothsk

    results = []
    calls = {
        "fit": lambda bad: type(clf)(sigma=0.25, max_epochs=1, module__hidden_units=(8,))
        .fit(bad, np.arange(len(bad)) % 10),
        "predict": lambda bad: clf.predict(bad),
        "estimator certify": lambda bad: clf.certify(bad, n0=10, n=20),
        "certify": lambda bad: smoothsk.certify(clf.module_, bad, 0.25, n0=10, n=20),
        "certify_radius": lambda bad: clf.certify_radius(bad, 0.1, n=20),
        "class_counts": lambda bad: smoothsk.class_counts(clf.module_, bad, 0.25, 20),
    }
    for value in (np.nan, np.inf, -np.inf):
        bad = X[:20].copy()
        bad[3, 5] = value
        for name, call in calls.items():
            try:
                call(bad)
                outcome = "accepted"
            except ValueError as exc:
                outcome = None if any(w in str(exc).lower() for w in
                                      ("finite", "nan", "inf")) else f"unclear: {exc}"
            except Exception as exc:  # noqa: BLE001
                outcome = f"{type(exc).__name__}: {exc}"
            results.append((f"{name} with {value}", outcome))
    return results


def planted_files(work: Path, model: Path, tsv: Path) -> list[tuple[str, str | None]]:
    import json

    from smoothsk.io.model_file import load_model

    marker = work / "MARKER"
    archive = torch.load(model, weights_only=True)
    document = json.loads(archive["document"])
    command = [f"sh -c 'touch {marker}; exec g++ \"$@\"' sh"]
    payloads = {
        "compile cpp.cxx": {"compile": True, "compile__options": {"cpp.cxx": command}},
        "compile trace.debug_dir": {"compile": True, "compile__options": {
            "trace.enabled": True, "trace.debug_dir": str(marker)}},
        "compile backend": {"compile": True, "compile__backend": "os.system"},
        "callback argument": {"callbacks__print_log__sink": {"class": "os.system"}},
        "iterator_train": {"iterator_train": {"class": "os.system"}},
        "dataset": {"dataset": {"class": "subprocess.Popen"}},
        "device meta": {"device": "meta"},
        "device path": {"device": str(marker)},
        "torch_load_kwargs": {"torch_load_kwargs": {"weights_only": False}},
        "module class": {"module": {"class": "os.system"}},
    }
    cases = {}
    for name, extra in payloads.items():
        planted = json.loads(json.dumps(document))
        planted["params"].update(extra)
        cases[name] = dict(archive, document=json.dumps(planted))
    cases["document nested 200,000 deep"] = dict(archive, document=json.dumps(
        document)[:-1] + ', "x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    cases["training_info a list"] = dict(archive, document=json.dumps(
        dict(document, training_info=[1, 2])))

    class RunsOnLoad:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    results = []
    for name, content in cases.items():
        path = work / f"planted-{len(results)}.smoothsk"
        torch.save(content, path)
        outcomes = []
        for how in ("load_model", "cli certify"):
            try:
                if how == "load_model":
                    loaded = load_model(path)
                    if name == "training_info a list":
                        loaded.predict(np.zeros((1, *loaded.input_shape_), np.float32))
                        continue
                    outcomes.append(f"{how} accepted it")
                else:
                    before = set(work.rglob("*"))
                    code, stderr = run_cli(["certify", path, "--dataset", "digits", "--max", "2",
                                            "--n0", "10", "--n", "20", "--out", "p.tsv"], work)
                    if name == "training_info a list" and code == 0:
                        for p in work.glob("p.tsv*"):
                            p.unlink()
                        continue
                    problem = refused_cleanly(code, stderr, before, work)
                    if problem:
                        outcomes.append(f"{how}: {problem}")
            except ValueError as exc:
                if "\n" in str(exc):
                    outcomes.append(f"{how}: a {len(str(exc).splitlines())}-line message")
            except Exception as exc:  # noqa: BLE001
                outcomes.append(f"{how}: {type(exc).__name__}")
        if marker.exists():
            outcomes.append("the payload ran")
            marker.unlink()
        results.append((name, "; ".join(outcomes) or None))
    pickled = work / "pickled.smoothsk"
    torch.save({"document": RunsOnLoad()}, pickled)
    code, stderr = run_cli(["certify", pickled, "--dataset", "digits", "--out", "q.tsv"], work)
    results.append(("pickled global", "the payload ran" if marker.exists() else
                    refused_cleanly(code, stderr, set(work.rglob("*")), work)))
    sidecar = Path(str(tsv) + ".run.json")
    original = sidecar.read_text()
    for name, text in [("sidecar of wrong types", json.dumps({"describes": [1], "n": "x"})),
                       ("sidecar nested 200,000 deep", "[" * 200_000 + "]" * 200_000)]:
        sidecar.write_text(text)
        code, stderr = run_cli(["report", tsv], work)
        results.append((name, None if code in (0, 2) and "Traceback" not in stderr
                        and len(stderr.strip().splitlines()) <= 1 else f"exit {code}: {stderr}"))
    sidecar.write_text(original)
    long_field = work / "long.tsv"
    long_field.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t" + "1" * 140_000
                          + "\t1\t0.5\t1\t0:00:01\n")
    code, stderr = run_cli(["report", long_field], work)
    results.append(("TSV field over 131,072 characters",
                    refused_cleanly(code, stderr, set(work.rglob("*")), work)))
    return results


def soundness() -> list[tuple[str, str | None]]:
    from scipy.stats import binom, norm

    import smoothsk

    class Linear(torch.nn.Module):  # sign of w·x + b: true radius |w·x + b| / |w|
        def __init__(self, w, b):
            super().__init__()
            self.w, self.b = torch.as_tensor(w), float(b)

        def forward(self, x):
            margin = x.flatten(1).double() @ self.w.double() + self.b
            return torch.stack([-margin, margin], 1).float()

    rng = np.random.default_rng(0)
    w = rng.normal(size=8)
    trials, alpha, sigma = 1000, 0.01, 0.5
    # inputs whose p_A is spread over (0.5, 0.999): many certificates near the truth
    target = sigma * norm.ppf(rng.uniform(0.55, 0.999, trials))
    direction = w / np.linalg.norm(w)
    X = (rng.normal(size=(trials, 8)) * 0.1)
    X -= np.outer(X @ direction, direction)
    X += np.outer(target * rng.choice([-1, 1], trials), direction)
    net = Linear(w, 0.0)
    cert = smoothsk.certify(net, X.astype(np.float32), sigma, n0=50, n=2000, alpha=alpha,
                            random_state=0)
    truth = np.abs(X @ w) / np.linalg.norm(w)
    predicted_right = cert.prediction == (X @ w > 0).astype(int)
    wrong = (cert.prediction != -1) & (~predicted_right | (cert.radius > truth))
    limit = binom.ppf(1 - 1e-4, trials, alpha)  # violations ~ at most Bin(trials, α)
    return [("CERTIFY violations on the analytic classifier",
             None if wrong.sum() <= limit else f"{wrong.sum()} > {limit:.0f}")]


def parallel_backends(clf, X) -> list[tuple[str, str | None]]:
    import joblib

    import smoothsk

    serial = smoothsk.certify(clf.module_, X[:16], 0.25, n0=20, n=200, random_state=3)
    results = []
    for backend in ("loky", "threading", "sequential", "multiprocessing"):
        try:
            with joblib.parallel_config(backend=backend):
                cert = smoothsk.certify(clf.module_, X[:16], 0.25, n0=20, n=200,
                                        random_state=3, n_jobs=2)
            same = np.array_equal(cert.radius, serial.radius) and \
                np.array_equal(cert.prediction, serial.prediction)
            results.append((backend, None if same else "differs from the serial run"))
        except ValueError as exc:
            results.append((backend, None if backend == "multiprocessing" and
                            "loky" in str(exc) else f"ValueError: {exc}"))
    return results


def kills(work: Path, model: Path) -> list[tuple[str, str | None]]:
    results = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for delay in (1.0, 4.0, 8.0):
        out = work / f"killed-{delay}.tsv"
        process = subprocess.Popen(
            [SMOOTHSK, "certify", str(model), "--dataset", "digits", "--n", "100000",
             "--jobs", "2", "--quiet", "--out", str(out)], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.kill()
        process.wait()
        deadline = time.time() + 30
        while process_group_members(process.pid) and time.time() < deadline:
            time.sleep(0.2)
        left = process_group_members(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        results.append((f"SIGKILL of certify --jobs 2 after {delay:g} s",
                        f"{len(left)} processes left" if left else None))
    # at start-up (torch loading), early in training, right after the checkpoints of
    # epochs 1 and 2 (a milestone of --lr-step 2)
    for moment in ("start-up", "training", 1, 2):
        out = work / f"interrupted-{moment}.smoothsk"
        checkpoint = Path(str(out) + ".ckpt")
        process = subprocess.Popen(
            [SMOOTHSK, "train", "--dataset", "digits", "--method", "gaussian", "--epochs",
             "300", "--lr-step", "2", "--optimizer", "sgd", "--threads", "1", "--quiet",
             "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 120
        if moment == "start-up":
            time.sleep(0.5)
        elif moment == "training":
            time.sleep(8)
        while isinstance(moment, int) and time.time() < deadline and process.poll() is None:
            with contextlib.suppress(ValueError, OSError, KeyError, TypeError):
                if len(load_data_only(checkpoint)["history"]) >= moment:
                    break
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        problem = None
        if process.returncode != 130:
            problem = f"exit {process.returncode}" if process.returncode else "finished first"
        elif out.exists() or "Traceback" in err or len(err.strip().splitlines()) != 1:
            problem = "left --out or printed more than one line"
        elif isinstance(moment, int) and not checkpoint.exists():
            problem = "the checkpoint is gone"
        when = moment if isinstance(moment, str) else f"the checkpoint of epoch {moment}"
        results.append((f"SIGINT of train at {when}", problem))
    return results


def disk_full(work: Path, model: Path, tsv: Path) -> list[tuple[str, str | None]]:
    """Writes onto a full file system (a 256 KiB tmpfs, filled): one line, nothing left
    half-written.  Needs root to mount it; elsewhere the row is empty."""
    full = work / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)],
                      capture_output=True).returncode != 0:
        return []
    results = []
    try:
        filler = full / "filler"
        cases = [
            ("train --out on a full disk", ["train", "--dataset", "digits", "--method",
                                            "gaussian", "--epochs", "1", "--quiet", "--out",
                                            full / "m.smoothsk"], 0),
            ("train --out with 200 KiB free", ["train", "--dataset", "digits", "--method",
                                               "gaussian", "--epochs", "1", "--quiet", "--out",
                                               full / "m.smoothsk"], 56),
            ("certify --out on a full disk", ["certify", model, "--dataset", "digits", "--max",
                                              "20", "--n0", "10", "--n", "50", "--quiet",
                                              "--out", full / "r.tsv"], 0),
            ("report --plot on a full disk", ["report", tsv, "--plot", full / "c.png"], 0),
            ("report --markdown on a full disk", ["report", tsv, "--markdown", full / "t.md"],
             0),
        ]
        for name, argv, used_kib in cases:
            filler.unlink(missing_ok=True)
            with open(filler, "wb") as stream:  # fill all but (256 − used) KiB
                with contextlib.suppress(OSError):
                    stream.write(b"x" * ((used_kib or 256) * 1024))
            code, stderr = run_cli(argv, work)
            left = sorted(p.name for p in full.iterdir() if p != filler)
            problem = refused_cleanly(code, stderr, set(work.rglob("*")), work)
            if left:
                problem = f"left {left}"
            results.append((name, problem))
            for path in full.iterdir():
                path.unlink()
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)
    return results


def main(argv=None):
    parser = harness.parser(__doc__)
    parser.add_argument("--out", default="benchmarks/results/audit.json")
    args = harness.parse(parser, argv)
    from smoothsk import GaussianAugClassifier
    from smoothsk.datasets import load_dataset

    X, y = load_dataset("digits", split="train", flat=True)
    clf = GaussianAugClassifier(sigma=0.25, max_epochs=2, module__hidden_units=(32,),
                                random_state=0).fit(X, y)
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        fixtures = work / "fixtures"
        fixtures.mkdir()
        model, tsv = fixtures / "m.smoothsk", fixtures / "r.tsv"
        for argv in (["train", "--dataset", "digits", "--method", "gaussian", "--sigma",
                      "0.25", "--epochs", "1", "--set", "module__hidden_units=(16,)",
                      "--quiet", "--out", model],
                     ["certify", model, "--dataset", "digits", "--max", "4", "--n0", "20",
                      "--n", "100", "--quiet", "--out", tsv]):
            code, stderr = run_cli(argv, work)
            assert code == 0, stderr
        cwd = work / "cwd"
        cwd.mkdir()
        for name, check in [
                ("bad invocations", lambda: bad_invocations(cwd, model, tsv)),
                ("non-finite inputs", lambda: non_finite_inputs(clf, X)),
                ("planted files", lambda: planted_files(cwd, model, tsv)),
                ("soundness", soundness),
                ("parallel backends", lambda: parallel_backends(clf, X)),
                ("kills", lambda: kills(cwd, model)),
                ("disk full", lambda: disk_full(cwd, model, tsv))]:
            start = time.perf_counter()
            cases = check()
            failed = [(case, why) for case, why in cases if why]
            rows[name] = {"tried": len(cases), "failed": len(failed),
                          "failures": [f"{case}: {why}" for case, why in failed],
                          "seconds": round(time.perf_counter() - start, 1)}
            print(f"{name}: {len(cases)} tried, {len(failed)} failed", flush=True)
            for case, why in failed:
                print(f"    {case}: {why}", flush=True)
    harness.write_json(args.out, {"rows": rows, "machine": harness.machine()})


if __name__ == "__main__":
    main()
