"""bf16 with and without the CPU's native bf16 instructions, side by side in one run.

LeNet (batch 200, one thread): the fp32 raw forward rate, and ``smoothsk.certify`` at
fp32, bf16 and bf16 + channels-last, as ratios to that rate.  Each row runs in a fresh
process twice: with oneDNN free to use every instruction the CPU has (on a CPU with
AVX-512 BF16 or AMX, native bf16), and with oneDNN capped at AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2``), the instruction set of a CPU without native bf16, where
bf16 is emulated.  Also records what ``precision="auto"`` resolves to.

    python benchmarks/bf16_isa.py --threads 1 [--out benchmarks/results/bf16-isa.json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import harness  # benchmarks/harness.py: parser, --threads, timing

CAPS = {"native": None, "avx2": "AVX2"}


def measure(threads: int, repeats: int) -> dict:
    import numpy as np
    import torch

    from smoothsk import certify
    from smoothsk.certification.precision import resolve_precision
    from smoothsk.models import LeNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = LeNet().eval()
    batch = torch.rand(200, 1, 28, 28)
    X = np.random.default_rng(0).random((10, 1, 28, 28)).astype(np.float32)
    n = 2000

    def forward(model, dtype=None):
        def run():
            with torch.inference_mode():
                if dtype is None:
                    model(batch)
                else:
                    with torch.autocast("cpu", dtype=dtype):
                        model(batch)
        return run

    raw = harness.timed(forward(net), repeats=repeats)["median"]
    rate = batch.shape[0] / raw
    rows = {"fp32 raw forward samples/s": rate}
    layouts = {"fp32": (net, "fp32"), "bf16": (net, "bf16"),
               "bf16 + channels-last": (LeNet().eval().to(memory_format=torch.channels_last),
                                        "bf16")}
    for name, (model, precision) in layouts.items():
        seconds = harness.timed(lambda m=model, p=precision: certify(
            m, X, 0.25, n0=10, n=n, batch_size=200, precision=p, random_state=0),
            repeats=repeats)["median"]
        rows[f"certify {name} / raw fp32"] = len(X) * (n + 10) / seconds / rate
    rows["bf16 raw forward / fp32"] = raw / harness.timed(
        forward(net, torch.bfloat16), repeats=repeats)["median"]
    rows["auto resolves to"] = resolve_precision("auto", "cpu")
    return rows


def main(argv=None):
    parser = harness.parser(__doc__, threads=1, out="benchmarks/results/bf16-isa.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help="(internal) one measurement")
    args = harness.parse(parser, argv)
    if args.child:
        print(json.dumps(measure(args.threads, args.repeats)))
        return
    result = {"machine": harness.machine(), "rows": {}}
    for cap, isa in CAPS.items():
        env = dict(os.environ)
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        run = subprocess.run([sys.executable, __file__, "--child", "--threads",
                              str(args.threads), "--repeats", str(args.repeats)],
                             env=env, capture_output=True, text=True, check=True)
        result["rows"][cap] = json.loads(run.stdout.strip().splitlines()[-1])
        print(cap, json.dumps(result["rows"][cap], indent=1))
    harness.write_json(args.out, result)


if __name__ == "__main__":
    main()
