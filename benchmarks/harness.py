"""What every benchmark script shares: its argument parser, timing, machine info, results.

``parser(doc, threads=...)`` gives an ``argparse`` parser with ``--threads`` (and
``--out`` where a script writes one JSON file); ``parse(parser, argv)`` parses and applies
the thread count, so each script states only its own options.  ``timed`` measures a
callable as the benchmarks report it (warm-up calls first, then the median and minimum of
repeats, the device synchronised around each), ``machine`` records where a figure was
measured (torch, threads, CPU model and the features bf16 needs), ``rss_mib`` the resident
memory, and ``write_json`` writes a result atomically.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["cpu_model", "machine", "parse", "parser", "rss_mib", "timed", "write_json"]


def parser(doc: str | None, *, threads: int | None = None,
           out: str | None = None) -> argparse.ArgumentParser:
    """An argument parser described by the first line of ``doc``, with ``--threads``
    (default ``threads``; None keeps torch's) and, when ``out`` is given, ``--out``."""
    result = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    result.add_argument("--threads", type=int, default=threads,
                        help="torch intra-op threads (default: %(default)s; None keeps "
                             "torch's own)")
    if out is not None:
        result.add_argument("--out", type=Path, default=Path(out),
                            help="the JSON file the results go to")
    return result


def parse(arguments: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse ``argv`` and apply ``--threads`` before any work."""
    args = arguments.parse_args(argv)
    if args.threads:
        if args.threads < 1:
            arguments.error(f"--threads must be at least 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    return args


def _synchronize(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], *, repeats: int = 3, warmup: int = 1,
          device=None) -> dict:
    """Seconds per call of ``function``: ``{"median": ..., "min": ..., "repeats": ...}``.

    ``warmup`` calls run first and are not counted (allocator, autotuning, caches); on a
    CUDA ``device`` each timed call is bracketed by a synchronisation.
    """
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        function()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "repeats": repeats}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), for the record."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Where a figure was measured: torch, its threads, the CPU, the vector kernels torch
    dispatches to (``AVX2``, ``AVX512``, ...: fp32 training is bit-reproducible only on
    the same kernels) and the CPU's bf16 support."""
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": cpu_model(), "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        info["cpu_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        info["cpu_bf16"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def rss_mib() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json(path, result: dict) -> None:
    """Write ``result`` to ``path`` (directories created), replacing it whole."""
    from smoothsk.io.files import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
