"""Model files and resumable certification runs in the field's TSV format.

A certification run writes Cohen et al.'s TSV (``idx label predict radius correct
time``, one row per input, flushed and fsynced as it goes) plus a sidecar
``<out>.run.json`` naming the model (SHA-256 of the file) and every setting that
changes the results.  Re-running the same run continues after the last complete row;
the noise of input ``idx`` depends only on ``(seed, idx)``, so a resumed file is
byte-for-byte the rows of an uninterrupted run (except the ``time`` column).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from joblib import effective_n_jobs

from smoothsk.certification.inputs import take_rows
from smoothsk.certification.noise import recorded_step
from smoothsk.certification.precision import resolve_precision
from smoothsk.io.files import atomic_write_text
from smoothsk.io.model_file import load_model, save_model

__all__ = [
    "TSV_HEADER",
    "count_complete_rows",
    "RunLockedError",
    "RunMismatchError",
    "exclusive_run",
    "certify_to_tsv",
    "check_grid_run",
    "load_model",
    "save_model",
]

TSV_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"


# Sidecar entries a continued run may change: the number of inputs (a run may be
# extended), the library version that wrote the rows and the description of the model
# for reports (recorded, not compared: the model's digest already identifies it).
_MAY_CHANGE = {"indices", "smoothsk_version", "describes"}


class RunMismatchError(ValueError):
    """An output file exists and belongs to a different certification run."""


class RunLockedError(RuntimeError):
    """Another process holds the lock of this run's output."""


@contextlib.contextmanager
def exclusive_run(out):
    """Hold ``<out>.lock`` for the life of a run; a second writer fails at once.

    An advisory ``flock`` on a side file (never on the output itself, which the run may
    replace): the kernel drops it when the holder exits, even on SIGKILL, so a stale lock
    file never blocks a rerun.  The holder's PID is written into the file for the
    message, and the file is removed when the run ends.

    Parameters
    ----------
    out : str or Path
        The run's TSV (the lock is ``<out>.lock``).
    """
    lock_path = Path(out).with_name(Path(out).name + ".lock")
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder removes the file when it is done: a lock taken on a removed
            # file (opened just before) would not exclude a process opening the new one.
            if not lock_path.exists() or os.stat(lock_path).st_ino != os.fstat(
                    handle.fileno()).st_ino:
                raise BlockingIOError
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLockedError(
                f"{out} is being written by process {holder}; wait for it to finish or stop "
                "it, or choose another output."
            ) from None
        try:
            # unbuffered, and allowed to fail: on a full disk the PID (only for the
            # message) is not written, the run's own write says what happened, and the
            # lock file is still removed
            os.ftruncate(handle.fileno(), 0)
            with contextlib.suppress(OSError):
                os.pwrite(handle.fileno(), str(os.getpid()).encode(), 0)
            yield
        finally:
            lock_path.unlink(missing_ok=True)  # still held: nobody can have it meanwhile
    finally:
        handle.close()


def count_complete_rows(out) -> int:
    """How many complete rows a certification TSV holds (0 when it does not exist yet);
    reads only, never cuts a partial last row.

    Parameters
    ----------
    out : str or Path
        The certification TSV.
    """
    out = Path(out)
    if not out.exists():
        return 0
    return max(0, out.read_bytes().count(b"\n") - 1)


def _complete_rows(out: Path) -> list[str]:
    """Rows of an existing TSV up to the last complete line; the file is cut there."""
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a row cut short by a crash: drop it
        with open(out, "r+b") as stream:
            stream.truncate(end)
    try:
        lines = data[:end].decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise RunMismatchError(f"{out} is not a UTF-8 text file, so not a certification TSV "
                               "written by smoothsk.") from None
    if not lines or lines[0] != TSV_HEADER:
        raise RunMismatchError(f"{out} is not a certification TSV written by smoothsk.")
    return lines[1:]


def _check_tsv_labels(*label_sets) -> None:
    """A label holding a tab or a line break would break the TSV's rows and columns."""
    for labels in label_sets:
        if labels is None:
            continue
        bad = [str(v) for v in np.asarray(labels).ravel().tolist()
               if any(c in str(v) for c in "\t\n\r")]
        if bad:
            raise ValueError(
                f"Label {bad[0]!r} holds a tab or a line break, which a TSV row cannot "
                "hold; map the labels to names without them (or to class indices) before "
                "certifying to a TSV.")


def _format_row(idx, label, predict, radius, correct, seconds) -> str:
    elapsed = str(datetime.timedelta(seconds=round(seconds, 4)))
    return f"{idx}\t{label}\t{predict}\t{radius:.6g}\t{int(correct)}\t{elapsed}"


def certify_to_tsv(
    estimator,
    X,
    y,
    indices,
    out,
    *,
    run_info: dict,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    random_state: int,
    progress: Callable | None = None,
    rows_per_call: int | None = None,
    n_jobs: int | None = None,
    bound: str = "binary",
    interval: str = "clopper-pearson",
    radii=None,
) -> Path:
    """Certify inputs ``X[i]`` (global indices ``indices[i]``) into a resumable TSV.

    Parameters
    ----------
    estimator : fitted smoothsk estimator
    X : array or torch Dataset
        The inputs, in the order of ``indices``.
    y : array
        Their labels.
    indices : array of int
        Global index of each input in its data set (the TSV's ``idx``; keys the noise).
    out : path
        TSV to write or continue.
    run_info : dict
        What identifies the run (model digest, data set, split, ...); an existing
        ``out`` whose sidecar differs raises :class:`RunMismatchError`.  The number of
        inputs may grow: a run extended to more ``indices`` (whose first ones are the
        rows already written) continues the file.
    n0, n, alpha, batch_size, random_state
        As in :meth:`~smoothsk.SmoothedClassifier.certify`; recorded in the sidecar, so
        a resumed run refuses a change.
    progress : callable or None
        Called with the number of rows written after each call to ``certify``.
    rows_per_call : int or None
        Inputs per ``certify`` call (rows are written after each); default about
        20,000 noisy samples' worth (times the number of workers).
    n_jobs : int or None
        Workers for each call (``certify(n_jobs=...)``; a Dask cluster under
        ``joblib.parallel_config(backend="dask")``).  Rows stay ordered and complete.
    bound, interval : str
        How counts become radii (:func:`smoothsk.certification.radius.certified_radius`);
        recorded in the sidecar, so a resumed run refuses a change.
    radii : array-like of float or None
        Certify at this grid of radii sequentially instead
        (:meth:`~smoothsk.SmoothedClassifier.certify_radii`, at most ``n`` estimation
        draws per input): each row's radius is its largest certified grid radius, so the
        report's curve at the grid radii is exact.  Recorded; a resumed run refuses a
        change.
    """
    radii = check_grid_run(radii, bound=bound, interval=interval, n_jobs=n_jobs)
    with exclusive_run(out):
        return _certify_to_tsv(estimator, X, y, indices, Path(out), run_info=run_info, n0=n0,
                               n=n, alpha=alpha, batch_size=batch_size,
                               random_state=random_state, progress=progress,
                               rows_per_call=rows_per_call, n_jobs=n_jobs, bound=bound,
                               interval=interval, radii=radii)


def check_grid_run(radii, *, bound: str, interval: str, n_jobs) -> list | None:
    """The grid of a ``radii`` run as a sorted list (None: a CERTIFY run), refused with
    options that only CERTIFY takes.

    Parameters
    ----------
    radii : array-like of float or None
        The grid (None: CERTIFY).
    bound, interval : str
        CERTIFY's options, refused with a grid unless at their defaults.
    n_jobs : int or None
        Workers, refused with a grid.
    """
    if radii is None:
        return None
    from smoothsk.certification.radii import check_radii

    radii = check_radii(radii).tolist()
    if bound != "binary" or interval != "clopper-pearson" or n_jobs not in (None, 1):
        raise ValueError("radii decide each grid radius by a betting test in one process; "
                         "bound, interval and n_jobs apply to CERTIFY only (leave them at "
                         "their defaults).")
    return radii


def _certify_to_tsv(estimator, X, y, indices, out: Path, *, run_info, n0, n, alpha, batch_size,
                    random_state, progress, rows_per_call, n_jobs, bound, interval,
                    radii=None) -> Path:
    import smoothsk

    indices = np.asarray(indices, dtype=np.int64)
    y = np.asarray(y)
    _check_tsv_labels(y, getattr(estimator, "classes_", None))
    info = dict(run_info, n0=n0, n=n, alpha=alpha, seed=random_state, indices=len(indices),
                precision=resolve_precision(getattr(estimator, "precision", "fp32"),
                                            getattr(estimator, "device", None)),
                shared_noise=bool(getattr(estimator, "shared_noise", False)),
                bound=bound, interval=interval, smoothsk_version=smoothsk.__version__,
                radii=radii, **_noise_record(estimator))
    sidecar = out.with_name(out.name + ".run.json")
    done: list[str] = []
    if out.exists():
        if not sidecar.exists():
            raise RunMismatchError(
                f"{out} exists but was not written by a smoothsk certification run "
                f"(no {sidecar.name}); choose another --out or remove it."
            )
        try:
            previous = json.loads(sidecar.read_text(encoding="utf-8"))
        except (ValueError, RecursionError):  # not JSON, not UTF-8, absurdly nested
            previous = None
        if not isinstance(previous, dict):
            raise RunMismatchError(
                f"{sidecar} is corrupt (not a JSON object), so {out} cannot be continued; "
                "remove both to start over, or choose another --out.")
        previous.setdefault("precision", "fp32")  # sidecars before 0.2 were all fp32
        previous.setdefault("shared_noise", False)  # and drew independent noise
        previous.setdefault("bound", "binary")  # and bounded radii as Cohen et al.
        previous.setdefault("interval", "clopper-pearson")
        previous.setdefault("noise", "gaussian")  # and smoothed with float noise
        previous.setdefault("noise_step", None)
        previous.setdefault("radii", None)  # and ran CERTIFY
        # The number of inputs may grow (a run extended to more images): the rows already
        # written are checked against this run's indices below.
        differs = sorted(k for k in set(info) | set(previous)
                         if k not in _MAY_CHANGE and info.get(k) != previous.get(k))
        if differs:
            raise RunMismatchError(
                f"{out} belongs to a different run (differs in: {', '.join(differs)}); "
                "choose another --out, or remove it and its .run.json to start over."
            )
        done = _complete_rows(out)
        if len(done) > len(indices):
            raise RunMismatchError(
                f"{out} already holds {len(done)} rows, more than the {len(indices)} inputs "
                "of this run; certify at least as many inputs, or choose another --out."
            )
        expected = [str(i) for i in indices[: len(done)]]
        if [row.split("\t", 1)[0] for row in done] != expected:
            raise RunMismatchError(f"{out} has rows that this run would not write.")
        if previous.get("indices") != len(indices):
            atomic_write_text(sidecar, json.dumps(info, indent=1))
    else:
        atomic_write_text(sidecar, json.dumps(info, indent=1))
        atomic_write_text(out, TSV_HEADER + "\n")
    start = len(done)
    if progress is not None:
        progress(start)
    jobs = 1 if n_jobs in (None, 1) else effective_n_jobs(n_jobs)
    step = rows_per_call or jobs * max(1, min(256, -(-20_000 // n)))
    try:
        _write_rows(estimator, X, y, indices, out, start, step, jobs, n0=n0, n=n, alpha=alpha,
                    batch_size=batch_size, random_state=random_state, progress=progress,
                    n_jobs=n_jobs, bound=bound, interval=interval, radii=radii)
    except BaseException:
        if not done and _complete_rows(out) == []:
            # Nothing certified yet (a wrong model, a bad option, Ctrl-C): leave nothing
            # that would make a corrected rerun look like a different run.
            out.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
        raise
    return out


def _noise_record(estimator) -> dict:
    """The run's noise as a sidecar records it: the kind and the exact lattice step."""
    noise = getattr(estimator, "noise", "gaussian")
    return {"noise": noise,
            "noise_step": recorded_step(noise, getattr(estimator, "noise_step", None))}


def _write_rows(estimator, X, y, indices, out, start, step, jobs, *, n0, n, alpha, batch_size,
                random_state, progress, n_jobs, bound, interval, radii=None):
    with open(out, "a", encoding="utf-8") as stream:
        for first in range(start, len(indices), step):
            last = min(first + step, len(indices))
            chunk = take_rows(X, slice(first, last))
            began = time.perf_counter()
            if radii is None:
                cert = estimator.certify(
                    chunk, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                    random_state=random_state, index_offset=indices[first:last],
                    n_jobs=n_jobs, chunk_size=-(-(last - first) // jobs), bound=bound,
                    interval=interval)
            else:
                cert = estimator.certify_radii(
                    chunk, radii, n0=n0, max_n=n, alpha=alpha, batch_size=batch_size,
                    random_state=random_state, index_offset=indices[first:last])
            seconds = (time.perf_counter() - began) / (last - first)
            predicted = cert.labels(abstain_label=-1)
            correct = cert.is_correct(y[first:last])
            for j in range(last - first):
                stream.write(_format_row(indices[first + j], y[first + j], predicted[j],
                                         cert.radius[j], correct[j], seconds) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
            if progress is not None:
                progress(last)
