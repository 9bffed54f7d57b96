#!/usr/bin/env bash
# On a lent GPU machine (the device tool's nvidia-h200), after benchmarks/gpu/wheels.sh here; one size per call:
#   run(command="bash benchmarks/gpu/run.sh 0.5b", carry=[".whl"], timeout_s=570)   # ~4 min (estimate)
#   run(command="bash benchmarks/gpu/run.sh 7b",   carry=[".whl"], timeout_s=570)   # ~5 min (estimate)
#   run(command="bash benchmarks/gpu/run.sh recipes", carry=[".whl"], timeout_s=300) # the 4-bit CLI tests on CUDA
# The rows come back in $OUT/memory_gpu_<size>.json (written after every setup, so a cut-off run keeps its rows)
# with the log; copy them to benchmarks/results/. Sizes: 512 prompt + 512 new tokens, the recipes' micro-batches,
# one warm-up and one measured step per setup, one process per setup.
set -uo pipefail
SIZE=${1:?usage: run.sh 0.5b|1.5b|7b|recipes}
OUT=${OUT:-/tmp/trl_irl_gpu}; mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "install failed: run benchmarks/gpu/wheels.sh here and carry .whl"; exit 3; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # no network there: never wait on a timeout
# seconds, not minutes, to learn that the image lacks something: versions, then one 4-bit LoRA step on the GPU
python3 - <<'PY' 2>&1 | tee "$OUT/env_$SIZE.txt" || exit 4
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
for name in ("transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "pyarrow", "fsspec",
             "huggingface_hub", "tokenizers", "safetensors"):
    print(name, importlib.import_module(name).__version__)
import bitsandbytes as bnb
layer = bnb.nn.Linear4bit(256, 256, compute_dtype=torch.bfloat16, quant_type="nf4").cuda()
x = torch.randn(8, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
layer(x).float().pow(2).mean().backward()
print("4-bit forward/backward on cuda: ok, grad norm", x.grad.norm().item())
PY
if [ "$SIZE" = recipes ]; then  # the pipeline's 4-bit shared-base runs (tests/test_cli.py) with use_cpu=auto: on CUDA
  mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m trl_irl.cli "$@"\n' > /tmp/bin/trl-irl && chmod +x /tmp/bin/trl-irl
  export PATH=/tmp/bin:$PATH PYTHONPATH=/tmp/site:$PWD
  python3 -m pytest -p no:cacheprovider -q tests/test_cli.py -k "qlora or shared_base_4bit" 2>&1 | tee "$OUT/log_recipes.txt"
  exit "${PIPESTATUS[0]}"
fi
case "$SIZE" in
  0.5b|1.5b) SETUPS=policy_only,shared_base,separate ;;  # the 1.3x and 4x goals
  7b)   SETUPS=shared_base,policy_only,separate ;;  # the 20 GB goal first; separate last (it may run out of memory)
  *) echo "unknown size $SIZE"; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/env_$SIZE.txt"
time python3 benchmarks/memory.py --models "qwen2.5-$SIZE" --setups "$SETUPS" --steps 1 --workdir /tmp/trl_irl_models \
  --out "$OUT/memory_gpu_$SIZE.json" 2>&1 | tee "$OUT/log_$SIZE.txt"
