"""The ``smoothsk`` command line, end to end through the installed entry point."""

import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothsk.io.report import read_certification_tsv
from smoothsk.testing import process_group_members

pytestmark = pytest.mark.subprocess  # most tests run the installed entry point

SMOOTHSK = str(Path(sys.executable).with_name("smoothsk"))
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run(*args, check=True, cwd=None):
    result = subprocess.run([SMOOTHSK, *map(str, args)], capture_output=True, text=True,
                            env=ENV, cwd=cwd, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"smoothsk {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def run_here(*args, cwd=None):
    """``smoothsk ARGS`` through ``smoothsk.cli.main`` in this process, for invocations
    refused before any work: each spares a 4-second interpreter start (torch, scikit-learn).
    The installed entry point itself runs as a subprocess in every other test."""
    from smoothsk.cli import main

    threads, here = torch.get_num_threads(), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.chdir(cwd or here)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(arg) for arg in args])
            except SystemExit as exc:  # argparse's own refusals
                code = exc.code
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def rows_without_time(path):
    lines = Path(path).read_text().splitlines()
    return [line.rsplit("\t", 1)[0] for line in lines]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model.pkl"
    run("train", "--dataset", "digits", "--method", "gaussian", "--sigma", "0.25",
        "--epochs", "15", "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05",
        "--lr-step", "10", "--threads", "1", "--quiet",
        "--out", path)
    return path


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_train_certify_report_end_to_end(model, tmp_path):
    from smoothsk import GaussianAugClassifier
    from smoothsk.io.model_file import load_model

    loaded = load_model(model)
    assert isinstance(loaded, GaussianAugClassifier)  # the safe format, no pickle
    assert loaded.training_info_["epochs"] == 15
    # callbacks are training-time objects, not stored; the schedule's effect is recorded
    assert loaded.callbacks is None
    assert loaded.training_info_["final_lr"] == pytest.approx(0.005)  # ×0.1 after epoch 10
    assert not [p for p in model.parent.iterdir() if p.name.startswith(".")]  # no temp files
    umask = os.umask(0)
    os.umask(umask)
    assert model.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}.tsv"
        run("certify", model, "--dataset", "digits", "--skip", "50", "--max", "8",
            "--n0", "50", "--n", "300", "--seed", seed, "--quiet", "--out", out)
        lines = out.read_text().splitlines()
        assert lines[0].split("\t") == ["idx", "label", "predict", "radius", "correct", "time"]
        parsed = read_certification_tsv(out)
        np.testing.assert_array_equal(parsed.idx, np.arange(0, 400, 50))
        assert len(lines) == 9 and parsed.correct.mean() > 0.5
        runs.append(out)
    plot, table = tmp_path / "curves.png", tmp_path / "table.md"
    result = run("report", *runs, "--radii", "0:1:0.25", "--plot", plot, "--markdown", table,
                 "--labels", "first,second")
    assert "r=0.75" in result.stdout and "first" in result.stdout
    assert png_size(plot) == (1020, 750)  # 3.4 × 2.5 inches at 300 dpi: a paper column
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["run", "first", "second"]


def test_train_every_method_crt_from_a_teacher_and_catrs_from_a_target(model, tmp_path):
    small = ["--dataset", "digits", "--epochs", "1", "--threads", "1", "--quiet",
             "--set", "module__hidden_units=(16,)", "--max-train", "200"]
    for method, extra in [("smoothmix", ["--num-steps", "1", "--eta", "2"]),
                          ("smoothadv", ["--num-steps", "1", "--num-noise", "1"]),
                          ("macer", ["--num-noise", "2"]), ("consistency", []),
                          ("stability", [])]:
        out = tmp_path / f"{method}.pkl"
        result = run("train", "--method", method, *small, *extra, "--out", out)
        assert out.is_file() and "trained" in result.stdout
    student = tmp_path / "student.pkl"
    result = run("train", "--method", "crt", "--teacher", model, *small, "--out", student)
    assert "CRTStudent (sigma=0.25)" in result.stdout  # σ taken from the teacher
    catrs = tmp_path / "catrs.smoothsk"
    result = run("train", "--method", "catrs", "--target-model", model, "--sigma", "0.5",
                 "--num-steps", "1", "--num-noise", "2", "--target-draws", "50",
                 "--kl-weight", "2", *small, "--out", catrs)
    assert catrs.is_file() and "CATRSClassifier (sigma=0.5)" in result.stdout


def test_a_classifier_you_already_have_certified_and_denoised(model, tmp_path):
    import joblib
    from sklearn.linear_model import LogisticRegression

    from smoothsk import PretrainedSmoothingClassifier, certify
    from smoothsk.datasets import load_dataset
    from smoothsk.io.model_file import load_model

    X, y = load_dataset("digits", split="train", flat=True)
    Xt, _ = load_dataset("digits", split="test", flat=True)
    logistic = LogisticRegression(max_iter=300).fit(X, y)
    joblib.dump(logistic, tmp_path / "logistic.joblib")
    common = ["--dataset", "digits", "--max", "30", "--n", "300", "--quiet"]
    # a plain scikit-learn classifier: its smoothed classifier at --sigma, as certify() gives
    run("certify", tmp_path / "logistic.joblib", "--trust-pickle", "--sigma", "0.25",
        *common, "--out", tmp_path / "plain.tsv")
    direct = certify(logistic, Xt[:30], 0.25, n=300, random_state=0)
    rows = read_certification_tsv(tmp_path / "plain.tsv")
    np.testing.assert_allclose(rows.radius, direct.radius, atol=1e-6)  # TSV: 6 decimals
    # shared noise: recorded in the sidecar, and a resumed run refuses a change
    run("certify", tmp_path / "logistic.joblib", "--trust-pickle", "--sigma", "0.25",
        "--shared-noise", *common, "--out", tmp_path / "shared.tsv")
    assert '"shared_noise": true' in (tmp_path / "shared.tsv.run.json").read_text()
    result = run("certify", tmp_path / "logistic.joblib", "--trust-pickle", "--sigma", "0.25",
                 *common, "--max", "40", "--out", tmp_path / "shared.tsv", check=False)
    assert result.returncode == 2 and "shared_noise" in result.stderr
    for args, message in [(["--sigma", "0.25"], "--trust-pickle"),
                          (["--trust-pickle"], "give --sigma")]:
        result = run("certify", tmp_path / "logistic.joblib", *args, *common, "--out",
                     tmp_path / "x.tsv", check=False)
        assert result.returncode == 2 and message in result.stderr
    result = run("certify", model, "--sigma", "0.5", *common, "--out", tmp_path / "x.tsv",
                 check=False)
    assert result.returncode == 2 and "keeps the sigma" in result.stderr
    # denoisers: in front of a smoothsk model (safe file) and of a pickled classifier
    small = ["--dataset", "digits", "--epochs", "2", "--max-train", "300", "--quiet"]
    run("train", "--method", "denoised", "--classifier", model, "--objective", "stability",
        "--sigma", "0.5", *small, "--out", tmp_path / "denoised.smoothsk")
    denoised = load_model(tmp_path / "denoised.smoothsk")
    assert denoised.objective == "stability" and denoised.noise_level == 0.5
    result = run("train", "--method", "denoised", "--classifier", tmp_path / "logistic.joblib",
                 "--trust-pickle", *small, "--out", tmp_path / "denoised.joblib")
    assert "joblib pickle" in result.stdout
    again = load_model(tmp_path / "denoised.joblib", trusted=True)
    assert isinstance(again.classifier, LogisticRegression)
    np.testing.assert_array_equal(again.classifier.coef_, logistic.coef_)  # untouched
    run("certify", tmp_path / "denoised.joblib", "--trust-pickle", *common, "--out",
        tmp_path / "denoised.tsv")
    assert len(read_certification_tsv(tmp_path / "denoised.tsv").radius) == 30
    assert isinstance(PretrainedSmoothingClassifier(logistic), PretrainedSmoothingClassifier)


@pytest.mark.parametrize("args,message", [
    (["train", "--dataset", "digits", "--method", "denoised", "--out", "x"],
     "needs --classifier"),
    (["train", "--dataset", "digits", "--method", "gaussian", "--classifier", "m", "--out",
      "x"], "--classifier only applies"),
    (["train", "--dataset", "cifar100", "--method", "gaussian", "--out", "x"], "invalid choice"),
    (["train", "--dataset", "digits", "--method", "magic", "--out", "x"], "invalid choice"),
    (["train", "--dataset", "digits", "--method", "gaussian", "--sigma", "-1", "--out", "x"],
     "must be a finite float in the range (0.0, inf)"),
    (["train", "--dataset", "digits", "--method", "crt", "--out", "x"], "needs --teacher"),
    (["train", "--dataset", "digits", "--method", "gaussian", "--target-model", "m", "--out",
      "x"], "--target-model only applies to --method catrs"),
    (["train", "--dataset", "digits", "--method", "gaussian", "--set", "bogus=1", "--out", "x"],
     "bogus"),
    (["train", "--dataset", "mnist", "--method", "gaussian", "--out", "x"], "needs root"),
    (["certify", "missing.pkl", "--dataset", "digits", "--out", "r.tsv"], "does not exist"),
    (["report", "missing.tsv"], "does not exist"),
    (["report", "x.tsv", "--radii", "2:0:1"], "radii"),
])
def test_clear_errors(args, message, tmp_path):
    (tmp_path / "x.tsv").write_text("idx\tlabel\n0\t1\n")
    result = run_here(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_certify_rejects_bad_options_corrupt_models_and_foreign_outputs(model, tmp_path):
    base = ["--dataset", "digits", "--max", "2", "--n", "100", "--quiet"]
    for bad, message in [(["--alpha", "2"], "a finite float in the range (0.0, 1.0)"),
                         (["--n0", "0"], "an int in the range [1, inf)")]:
        result = run_here("certify", model, *base, *bad, "--out", tmp_path / "a.tsv")
        assert result.returncode == 2 and message in result.stderr
    corrupt = tmp_path / "corrupt.pkl"
    corrupt.write_bytes(model.read_bytes()[:1000])
    result = run_here("certify", corrupt, *base, "--out", tmp_path / "b.tsv")
    assert result.returncode == 2 and "not a readable model file" in result.stderr
    foreign = tmp_path / "foreign.tsv"
    foreign.write_text("my own notes\n")
    result = run_here("certify", model, *base, "--out", foreign)
    assert result.returncode == 2 and "not written by a smoothsk" in result.stderr
    assert foreign.read_text() == "my own notes\n"  # never appended to
    out = tmp_path / "c.tsv"
    run("certify", model, *base, "--out", out)
    for changed in (["--seed", "3"], ["--alpha", "0.01"], ["--skip", "2"]):
        result = run_here("certify", model, *base, *changed, "--out", out)
        assert result.returncode == 2 and "different run" in result.stderr


def test_killed_certification_resumes_to_the_uninterrupted_rows(model, tmp_path):
    args = ["certify", model, "--dataset", "digits", "--max", "60", "--n0", "50",
            "--n", "20000", "--seed", "5", "--threads", "1", "--quiet"]
    reference = tmp_path / "reference.tsv"
    run(*args, "--out", reference)
    out = tmp_path / "killed.tsv"
    process = subprocess.Popen([SMOOTHSK, *map(str, args), "--out", str(out)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if out.exists() and len(out.read_text().splitlines()) >= 4:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(out.read_text().splitlines()) - 1
    assert 3 <= written < 60, written  # killed part-way
    with open(out, "a") as stream:
        stream.write("99\t3\t3\t0.4")  # a row cut short by the kill
    run(*args, "--out", out)
    assert rows_without_time(out) == rows_without_time(reference)
    run(*args, "--out", out)  # a finished run stays as it is
    assert rows_without_time(out) == rows_without_time(reference)


def test_certification_extended_to_more_inputs_equals_one_run(model, tmp_path):
    args = ["certify", model, "--dataset", "digits", "--skip", "3", "--n0", "50", "--n", "2000",
            "--seed", "1", "--threads", "1", "--quiet"]
    reference = tmp_path / "reference.tsv"
    run(*args, "--max", "25", "--out", reference)
    out = tmp_path / "extended.tsv"
    run(*args, "--max", "10", "--out", out)
    first = rows_without_time(out)
    run(*args, "--max", "25", "--out", out)
    assert rows_without_time(out)[:11] == first  # the first 10 rows are kept, not redone
    assert rows_without_time(out) == rows_without_time(reference)
    result = run(*args, "--max", "5", "--out", out, check=False)
    assert result.returncode == 2 and "more than the 5 inputs" in result.stderr
    assert rows_without_time(out) == rows_without_time(reference)


def test_demo_writes_table_tsv_and_plot(tmp_path):
    result = run("demo", "--epochs", "2", "--n", "200", "--quiet", "--out-dir", tmp_path / "d")
    assert "certified accuracy" in result.stdout and "plot:" in result.stdout
    assert png_size(tmp_path / "d" / "certified_accuracy.png") == (1020, 750)
    assert len(read_certification_tsv(tmp_path / "d" / "certify-sigma0.25.tsv").radius) == 540


def test_certify_with_workers_and_a_dask_scheduler_writes_the_same_rows(model, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    args = ["certify", model, "--dataset", "digits", "--skip", "7", "--max", "30", "--n0", "50",
            "--n", "2000", "--seed", "2", "--quiet"]
    run(*args, "--out", tmp_path / "serial.tsv")
    run(*args, "--jobs", "2", "--out", tmp_path / "jobs.tsv")
    assert rows_without_time(tmp_path / "jobs.tsv") == rows_without_time(tmp_path / "serial.tsv")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        run(*args, "--scheduler", cluster.scheduler_address, "--out", tmp_path / "dask.tsv")
    assert rows_without_time(tmp_path / "dask.tsv") == rows_without_time(tmp_path / "serial.tsv")
    result = run(*args, "--jobs", "0", "--out", tmp_path / "zero.tsv", check=False)
    assert result.returncode == 2 and "--jobs" in result.stderr


def test_train_interrupted_keeps_the_last_epoch_and_resumes_exactly(tmp_path):
    import signal
    import time

    from smoothsk.io.model_file import load_model

    # Many short epochs (200 digits each): the interrupt always lands mid-training, even
    # when this process is scheduled late on a busy machine.
    args = ["train", "--dataset", "digits", "--method", "smoothmix", "--sigma", "0.5",
            "--num-steps", "2", "--epochs", "60", "--max-train", "200", "--optimizer", "sgd",
            "--lr", "0.05", "--quiet", "--threads", "1"]
    run(*args, "--out", tmp_path / "straight.smoothsk")
    out = tmp_path / "resumed.smoothsk"
    checkpoint = tmp_path / "resumed.smoothsk.ckpt"
    for _attempt in range(3):  # a run that finished before the signal proves nothing: retry
        out.unlink(missing_ok=True)
        checkpoint.unlink(missing_ok=True)
        # A shell without job control starts background jobs with SIGINT ignored, and
        # children inherit that: give the child the default, as in a terminal.
        process = subprocess.Popen([SMOOTHSK, *args, "--out", str(out)],
                                   stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                    signal.SIG_DFL))
        deadline = time.time() + 120
        while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        if process.returncode == 130:
            break
    assert process.returncode == 130, err  # interrupted after a complete epoch
    assert "the last complete epoch is kept" in err and "Traceback" not in err
    assert not out.exists() and checkpoint.exists()
    run(*args, "--out", out)
    assert out.exists() and not checkpoint.exists()
    straight, resumed = load_model(tmp_path / "straight.smoothsk"), load_model(out)
    for name, value in straight.module_.state_dict().items():
        torch.testing.assert_close(resumed.module_.state_dict()[name], value, rtol=0, atol=0)


def _bad_invocations(model, tmp_path):
    """(arguments, message) of invocations that must exit 2 with one line, before any work."""
    (tmp_path / "ok.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                                     "0\t1\t1\t0.5\t1\t0:00:01\n")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "latin1.tsv").write_bytes(b"idx\tlabel\xff\n")
    (tmp_path / "list.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
    (tmp_path / "list.tsv.run.json").write_text("[1, 2]")
    (tmp_path / "corrupt.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
    (tmp_path / "corrupt.tsv.run.json").write_text("{not json")
    train = ["train", "--dataset", "digits", "--method", "gaussian", "--quiet"]
    certify = ["certify", model, "--dataset", "digits", "--max", "2", "--n", "50", "--quiet"]
    run(*certify, "--out", "real.tsv", cwd=tmp_path)  # a real run, then its TSV damaged
    with open(tmp_path / "real.tsv", "ab") as stream:
        stream.write(b"\xff\xfe\n")
    return [
        (train + ["--device", "cuda", "--out", "m"], "no CUDA GPU"),
        (train + ["--out", "outdir"], "is a directory"),
        (train + ["--out", "/proc/smoothsk-model"], "cannot be written"),  # even for root
        (train + ["--out", "nodir/m"], "does not exist"),
        (train + ["--threads", "100000", "--out", "m"], "--threads 100000"),
        (train + ["--set", "max_epochs=0", "--out", "m"],
         "'max_epochs' parameter of GaussianAugClassifier must be an int"),
        (certify + ["--device", "cuda", "--out", "r.tsv"], "no CUDA GPU"),
        (certify + ["--scheduler", "not an address", "--out", "r.tsv"], "not a Dask scheduler"),
        (["certify", model, "--dataset", "fashion-mnist", "--max", "2", "--out", "r.tsv"],
         "certify it on the data set it was trained on"),
        (certify + ["--out", "latin1.tsv"], "not written by a smoothsk certification run"),
        (certify + ["--out", "real.tsv"], "not a UTF-8 text file"),
        (certify + ["--out", "list.tsv"], "is corrupt (not a JSON object)"),
        (certify + ["--out", "corrupt.tsv"], "is corrupt (not a JSON object)"),
        (certify + ["--out", "outdir"], "is a directory"),
        (["report", "ok.tsv", "--radii", "0:1e9:1e-9"], "more than 10,000 radii"),
        (["report", "latin1.tsv"], "not a UTF-8 text file"),
        (["report", "ok.tsv", "--plot", "outdir"], "is a directory"),
    ]


def test_every_bad_invocation_is_one_clean_line_and_leaves_nothing(model, tmp_path):
    cases = _bad_invocations(model, tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for args, message in cases:
        if "fashion-mnist" in args and not Path(
                "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists():
            continue  # needs `make data`, which CI runs
        result = run_here(*args, cwd=tmp_path)
        command = args[0]
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"smoothsk {command}: error: "), \
            (args, result.stderr)
        assert message in lines[0], (args, lines[0])
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, args  # nothing left
    # and the valid report works on the same files
    assert run("report", "ok.tsv", "--labels", "$x^$", "--plot", "c.png",
               cwd=tmp_path).returncode == 0


def test_report_figure_for_a_paper(model, tmp_path):
    out = tmp_path / "run.tsv"
    run("certify", model, "--dataset", "digits", "--max", "40", "--n", "500", "--quiet",
        "--out", out)
    for suffix, magic in ((".pdf", b"%PDF"), (".svg", b"<?xml"), (".png", b"\x89PNG")):
        figure = tmp_path / f"curves{suffix}"
        run("report", out, "--plot", figure)
        assert figure.read_bytes().startswith(magic)
    svg = (tmp_path / "curves.svg").read_text()
    assert "Gaussian, σ = 0.25" in svg  # legend from the run's method and σ, not its file name
    assert "N = 40, n = 500, α = 0.001" in svg  # caption with the certification settings
    assert "certified accuracy (%)" in svg and "max at n (σ=0.25)" in svg
    result = run("report", out, "--plot", tmp_path / "curves.jpg", check=False)
    assert result.returncode == 2 and "must end in one of .pdf, .svg, .png" in result.stderr


def test_compile_on_the_command_line(model, tmp_path):
    from smoothsk.datasets import load_dataset
    from smoothsk.io.model_file import load_model

    common = ["--dataset", "digits", "--max", "6", "--n", "300", "--threads", "1", "--quiet"]
    run("certify", model, *common, "--out", tmp_path / "eager.tsv")
    run("certify", model, *common, "--compile", "--out", tmp_path / "compiled.tsv")
    # the trained weights survive compilation: the same votes, so the same rows
    assert rows_without_time(tmp_path / "compiled.tsv")[1:] == \
        rows_without_time(tmp_path / "eager.tsv")[1:]
    # train --compile is kept in the model file, and the file loads compiled
    run("train", "--dataset", "digits", "--method", "gaussian", "--sigma", "0.25",
        "--epochs", "1", "--compile", "--threads", "1", "--quiet",
        "--out", tmp_path / "compiled.smoothsk")
    loaded = load_model(tmp_path / "compiled.smoothsk")
    assert loaded.compile is True and type(loaded.module_).__name__ == "OptimizedModule"
    import joblib
    from sklearn.linear_model import LogisticRegression

    X, y = load_dataset("digits", split="train", flat=True)
    joblib.dump(LogisticRegression(max_iter=300).fit(X, y), tmp_path / "logistic.joblib")
    result = run("certify", tmp_path / "logistic.joblib", "--trust-pickle", "--sigma", "0.25",
                 "--compile", *common, "--out", tmp_path / "x.tsv", check=False)
    assert result.returncode == 2 and "--compile applies to smoothsk models" in result.stderr


def test_certify_compile_max_autotune_passes_inductor_options(model, monkeypatch):
    from smoothsk.io.model_file import load_model
    from smoothsk.models import MAX_AUTOTUNE_OPTIONS, compile_fitted

    calls = []

    def fake_compile(module, **kwargs):  # records what skorch asks torch for
        calls.append(kwargs)
        return module

    clf = load_model(model)
    weights = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    monkeypatch.setattr(torch, "compile", fake_compile)
    compile_fitted(clf, "max-autotune")
    assert {"options": MAX_AUTOTUNE_OPTIONS} in calls
    for name, value in clf.module_.state_dict().items():  # the trained weights, not fresh
        assert torch.equal(value, weights[name])


def test_certify_with_discrete_gaussian_noise_records_it_and_resumes_only_with_it(model,
                                                                                 tmp_path):
    out = tmp_path / "lattice.tsv"
    common = ["certify", model, "--dataset", "digits", "--max", "6", "--n", "200", "--quiet",
              "--out", out]
    result = run_here(*common, "--noise", "discrete-gaussian")
    assert result.returncode == 0, result.stderr
    sidecar = json.loads((tmp_path / "lattice.tsv.run.json").read_text())
    # digits are counts over 16: the data set's own lattice step
    assert (sidecar["noise"], sidecar["noise_step"]) == ("discrete-gaussian", "1/16")
    assert len(read_certification_tsv(out).radius) == 6
    result = run_here(*common[:-1], tmp_path / "other.tsv", "--noise", "discrete-gaussian",
                      "--noise-step", "1/255")
    assert result.returncode == 2 and "lattice of step 1/255" in result.stderr
    assert not (tmp_path / "other.tsv").exists()
    result = run_here(*common)  # the model's own (float) noise: another run
    assert result.returncode == 2 and "noise" in result.stderr
    result = run_here(*common[:-1], tmp_path / "x.tsv", "--noise-step", "1/16")
    assert result.returncode == 2 and "--noise-step applies" in result.stderr


def test_certify_at_a_grid_of_radii_writes_the_curve_and_resumes(model, tmp_path):
    out = tmp_path / "radii.tsv"
    common = ["certify", model, "--dataset", "digits", "--max", "20", "--quiet",
              "--radii", "0.25,0.5", "--max-n", "2000", "--out", out]
    result = run_here(*common)
    assert result.returncode == 0, result.stderr
    sidecar = json.loads((tmp_path / "radii.tsv.run.json").read_text())
    assert sidecar["radii"] == [0.25, 0.5] and sidecar["n"] == 2000
    rows = read_certification_tsv(out)
    assert set(np.unique(rows.radius)) <= {0.0, 0.25, 0.5} and len(rows.radius) == 20
    assert rows.certified_accuracy([0.25])[0] > 0.5
    result = run_here(*common[:-4], "--radii", "0.25,0.75", "--max-n", "2000", "--out", out)
    assert result.returncode == 2 and "radii" in result.stderr
    for extra, message in [(["--bound", "two-class"], "betting test"),
                           (["--radii", "-1"], "radii must be")]:
        result = run_here(*common[:-2], *extra, "--out", tmp_path / "x.tsv")
        assert result.returncode == 2 and message in result.stderr
    result = run_here(*common[:6], "--max-n", "10", "--out", tmp_path / "x.tsv")
    assert result.returncode == 2 and "--max-n applies to --radii" in result.stderr


def test_bad_values_and_orders_that_gave_tracebacks_or_half_written_files(model, tmp_path):
    result = run_here("train", "--dataset", "digits", "--method", "gaussian", "--epochs", "1",
                      "--set", "lr=abc", "--out", tmp_path / "m.smoothsk")
    assert result.returncode == 2 and "lr takes a number" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.smoothsk").exists()
    tsv = tmp_path / "a.tsv"
    assert run_here("certify", model, "--dataset", "digits", "--max", "3", "--n", "100",
                    "--quiet", "--out", tsv).returncode == 0
    many = ",".join(str(i / 1000) for i in range(10_001))
    result = run_here("report", tsv, "--radii", many)
    assert result.returncode == 2 and "more than" in result.stderr
    result = run_here("report", tsv, "--markdown", tmp_path / "t.md", "--plot",
                      tmp_path / "c.jpg")
    assert result.returncode == 2 and "--plot must end in" in result.stderr
    assert not (tmp_path / "t.md").exists()  # nothing written before the refusal


def test_train_refuses_to_overwrite_a_file_that_is_not_a_model(model, tmp_path):
    """``train --out notes.txt`` used to replace the user's file with a model."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    result = run_here("train", "--dataset", "digits", "--method", "gaussian", "--epochs", "1",
                      "--quiet", "--out", notes)
    assert result.returncode == 2 and "exists and is not a smoothsk model file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert notes.read_text() == "my notes\n"
    from smoothsk.io.model_file import is_model_file
    assert is_model_file(model) and not is_model_file(notes)
    assert not is_model_file(tmp_path / "absent.smoothsk") and not is_model_file(tmp_path)
    copy = tmp_path / "again.smoothsk"  # a model file is replaced, as before
    copy.write_bytes(Path(model).read_bytes())
    assert run_here("train", "--dataset", "digits", "--method", "gaussian", "--epochs", "1",
                    "--max-train", "64", "--quiet", "--out", copy).returncode == 0
    assert copy.read_bytes() != Path(model).read_bytes()


def test_a_pickle_only_model_never_goes_to_a_safe_format_name(tmp_path):
    """A denoiser in front of a classifier from a trusted pickle can only be saved as a
    pickle: ``--out den.smoothsk`` would put a pickle under the safe format's suffix."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    from smoothsk.datasets import load_dataset

    X, y = load_dataset("digits", split="train", flat=True)
    joblib.dump(LogisticRegression(max_iter=50).fit(X[:200], y[:200]), tmp_path / "lr.joblib")
    result = run_here("train", "--dataset", "digits", "--method", "denoised", "--classifier",
                      tmp_path / "lr.joblib", "--trust-pickle", "--epochs", "1", "--quiet",
                      "--out", tmp_path / "den.smoothsk")
    assert result.returncode == 2 and "can only be saved as a joblib pickle" in result.stderr
    assert "--out " + str(tmp_path / "den.joblib") in result.stderr
    assert not (tmp_path / "den.smoothsk").exists()
    # a scikit-learn pickle without --trust-pickle is named for what it is
    result = run_here("certify", tmp_path / "lr.joblib", "--dataset", "digits", "--sigma",
                      "0.25", "--out", tmp_path / "c.tsv")
    assert result.returncode == 2 and "is a pickle (a joblib or pickle file" in result.stderr
    assert "smoothsk 0.1" not in result.stderr


def test_finished_runs_say_so_and_tables_name_runs_as_the_plot_does(model, tmp_path):
    common = ["--dataset", "digits", "--n", "100", "--quiet", "--out", tmp_path / "c.tsv"]
    first = run_here("certify", model, "--max", "4", *common)
    assert first.returncode == 0 and "certified 4 inputs" in first.stdout
    again = run_here("certify", model, "--max", "4", *common)
    assert again.returncode == 0 and "already certified" in again.stdout
    assert "in 0.0 s" not in again.stdout
    more = run_here("certify", model, "--max", "6", *common)
    assert "certified 2 inputs" in more.stdout and "4 were already there" in more.stdout
    table = run_here("report", tmp_path / "c.tsv")
    assert "Gaussian, σ = 0.25" in table.stdout  # as the plot's legend, not the file stem
    helped = " ".join(run_here("report", "--help").stdout.split())  # argparse wraps lines
    assert ".pdf, .svg or .png" in helped and "end of the plot's radius axis" in helped
    assert "where the model, the TSV" in " ".join(run_here("demo", "--help").stdout.split())


def test_one_epoch_is_one_epoch(tmp_path):
    result = run_here("train", "--dataset", "digits", "--method", "gaussian", "--epochs", "1",
                      "--max-train", "64", "--quiet", "--out", tmp_path / "m.smoothsk")
    assert result.returncode == 0 and " for 1 epoch in " in result.stdout


@pytest.mark.parametrize("args", [
    ["certify", "--n", "0", "m"], ["certify", "--alpha", "1.5", "m"], ["train", "--bogus"],
    [], ["report"], ["train", "--dataset", "digits", "--method", "magic", "--out", "x"],
    ["certify", "m", "--dataset", "digits", "--out", "r.tsv", "--unknown-option"],
])
def test_argparse_refusals_are_one_line_with_where_help_is(args):
    result = run_here(*args)
    assert result.returncode == 2 and "usage:" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smoothsk") and "--help)" in lines[0]


@pytest.mark.parametrize("command, says", [
    ("report", "nothing was written"), ("demo", "run smoothsk demo again"),
    ("certify", "completed rows are kept"), ("train", "last complete epoch is kept")])
def test_ctrl_c_says_what_each_command_leaves_behind(command, says, monkeypatch, tmp_path):
    import importlib

    module = importlib.import_module(f"smoothsk.cli.{command}")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run", interrupted)
    words = {"report": ["report", "x.tsv"], "demo": ["demo"],
             "certify": ["certify", "m", "--dataset", "digits", "--out", "r.tsv"],
             "train": ["train", "--dataset", "digits", "--method", "gaussian", "--out", "m"]}
    result = run_here(*words[command], cwd=tmp_path)
    assert result.returncode == 130 and says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_ensemble_of_trained_model_files_trains_certifies_and_reports(model, tmp_path):
    small = ["--dataset", "digits", "--epochs", "1", "--threads", "1", "--quiet",
             "--set", "module__hidden_units=(16,)", "--max-train", "200"]
    second, other_sigma = tmp_path / "second.smoothsk", tmp_path / "wide.smoothsk"
    run("train", "--method", "gaussian", "--sigma", "0.25", "--seed", "1", *small,
        "--out", second)
    ensemble = tmp_path / "ensemble.smoothsk"
    result = run("train", "--method", "ensemble", "--dataset", "digits", "--members",
                 f"{model},{second}", "--consensus", "2", "--out", ensemble)
    assert "assembled an ensemble of 2 members (sigma=0.25, soft voting, 2-consensus)" \
        in result.stdout
    out = tmp_path / "ensemble.tsv"
    run("certify", ensemble, "--dataset", "digits", "--max", "4", "--n0", "20", "--n", "200",
        "--quiet", "--out", out)
    sidecar = json.loads(Path(str(out) + ".run.json").read_text())
    assert sidecar["describes"] == {"method": "ensemble", "sigma": 0.25, "members": 2}
    assert "Ensemble of 2, σ = 0.25" in run("report", out, "--radii", "0,0.25").stdout
    # the refusals say what to do, and leave nothing at --out
    run("train", "--method", "gaussian", "--sigma", "0.5", *small, "--out", other_sigma)
    base = ["train", "--dataset", "digits", "--out", tmp_path / "refused.smoothsk"]
    for extra, says in [
        (["--method", "ensemble", "--members", f"{model},{second}", "--epochs", "3"],
         "--epochs train a network; --method ensemble trains nothing"),
        (["--method", "ensemble", "--members", str(model)], "at least two trained model"),
        (["--method", "ensemble", "--members", f"{model},{other_sigma}"],
         "trained at different sigma ([0.25, 0.5])"),
        (["--method", "ensemble", "--members", f"{model},{second}", "--consensus", "3"],
         "consensus must be None or an int in 2 … 2"),
        (["--method", "ensemble", "--members", f"{model},{tmp_path / 'none.smoothsk'}"],
         "cannot use --members"),
        (["--method", "gaussian", "--members", f"{model},{second}"],
         "--members only applies to --method ensemble"),
        (["--method", "gaussian", "--voting", "hard"], "--voting is not an option of"),
        # another method's option is refused, not ignored (it was, before the ensemble
        # went through the check every method goes through)
        (["--method", "ensemble", "--members", f"{model},{second}", "--eta", "3"],
         "--eta is not an option of --method ensemble (its options: --voting, --consensus"),
    ]:
        result = run_here(*base, *extra)
        assert result.returncode != 0 and says in result.stderr, (extra, result.stderr)
        assert not (tmp_path / "refused.smoothsk").exists()
    result = run_here(*base, "--method", "ensemble", "--voting", "most")
    assert result.returncode == 2 and "soft" in result.stderr and "hard" in result.stderr


def test_ensemble_members_are_named_after_their_files_distinctly():
    from smoothsk.cli.ensemble import member_names

    assert member_names(["a/gauss.smoothsk", "b/gauss.smoothsk", "c/x__y.smoothsk"]) == \
        ["gauss", "gauss-2", "x_y"]


@pytest.mark.parametrize("delay", [0.5, 1.5])
def test_ctrl_c_while_the_command_starts_is_one_line(delay, tmp_path):
    # importing torch, scikit-learn and skorch takes seconds: the signal lands inside it
    process = subprocess.Popen([SMOOTHSK, "report", str(tmp_path / "none.tsv")],
                               stderr=subprocess.PIPE, text=True, env=ENV,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("smoothsk") and "interrupted" in err


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize("moment", ["while the workers start", "while they certify"])
def test_workers_die_with_a_sigkilled_certify(model, tmp_path, moment):
    out = tmp_path / "killed.tsv"
    process = subprocess.Popen(
        [SMOOTHSK, "certify", str(model), "--dataset", "digits", "--n", "100000", "--jobs",
         "2", "--quiet", "--out", str(out)], env=ENV, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        # the caller, loky's and multiprocessing's resource trackers, two workers
        while len(process_group_members(process.pid)) < 5 and time.time() < deadline:
            time.sleep(0.05)
        if moment == "while they certify":
            while (not out.exists() or len(out.read_text().splitlines()) < 3) and \
                    time.time() < deadline:
                time.sleep(0.05)
        process.kill()
        process.wait()
        # the workers notice within half a second of getting a task or of starting
        # (importing torch takes seconds), then the trackers see their pipes close
        deadline = time.time() + 60
        while process_group_members(process.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert process_group_members(process.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
