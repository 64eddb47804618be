#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (about three minutes on an H100):
# the CUDA tests, certification speed against Cohen's loop and the raw forward rate (also at
# reduced precision, channels-last and compiled),
# and certification and training speed at each precision.
#
#     bash benchmarks/gpu.sh [OUTDIR]      (default benchmarks/results/gpu)
#
# Needs torch with CUDA, skorch, scikit-learn, scipy and statsmodels importable; the
# repository is put on PYTHONPATH, nothing is installed.
set -u
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, sklearn, skorch; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'scikit-learn', sklearn.__version__, 'skorch', skorch.__version__)" \
    | tee -a "$out/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py \
    tests/certification/test_certification.py::test_certify_with_gpu_module_if_available 2>&1 \
    | tee "$out/tests.txt"
timeout 360 python3 benchmarks/certify_speed.py --device cuda --repeats 3 \
    --out "$out/certify-speed.json" 2>&1 | tee "$out/certify-speed.txt"
timeout 150 python3 benchmarks/precision.py --device cuda --repeats 3 \
    --out "$out/precision.json" 2>&1 | tee "$out/precision.txt"
