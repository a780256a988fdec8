#!/usr/bin/env bash
# One prepared GPU check (run on a lent CUDA machine from the repo root): the whole test suite
# (CUDA-marked tests included) and the demo on cuda. Writes logs under $OUT (or ./gpu-check) and
# the demo's run directory beside them: a new path each time, which the runner creates itself
# (it refuses one that exists). tests/test_gpu_script.py runs this script with stand-ins for
# python3, nvidia-smi and slimbench, and every `slimbench` call through the CLI's parser.
# Needs torch with CUDA, transformers, onnx, onnxruntime, sacrebleu, rouge-score and pytest.
set -uo pipefail
OUT=${OUT:-gpu-check}
RUN="$OUT/demo-$(date -u +%Y%m%d-%H%M%S)"  # never created here: the runner refuses existing dirs
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then  # extra wheels carried to a machine with no index
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
export PYTHONUNBUFFERED=1
python3 -m pytest -q -rs tests 2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
# cuda cells only, 50 examples per generation task (the committed CPU baseline then measured
# another suite: the demo says so and skips that gate, so demo_rc is the run's own status)
slimbench demo "devices=[cuda]" task_limit=50 --out "$RUN" 2>&1 | tee "$OUT/demo.log"
demo_rc=${PIPESTATUS[0]}
echo "cuda tests rc=$tests_rc demo rc=$demo_rc"
exit $(( tests_rc || demo_rc ))
