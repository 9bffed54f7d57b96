#!/usr/bin/env bash
# On a lent GPU machine (the device tool's nvidia-h200), after benchmarks/gpu/wheels.sh here. One call runs several
# targets in order, each stopped at its own limit (seconds) so that the ones after it still run:
#   run(command="bash benchmarks/gpu/run.sh recipes:120 7b:300 0.5b:140", carry=[".whl"], timeout_s=600)
# recipes: the CLI's 4-bit shared-base tests (tests/test_cli.py, recipe=qlora/ppo_0.5b among them) and the default
# run, on CUDA. 0.5b / 1.5b / 7b: benchmarks/memory.py's rows for that Qwen2.5 shape (random weights), 512 prompt +
# 512 new tokens, the qlora recipes' micro-batches, one warm-up and one measured step per setup, one process per
# setup, written to $OUT/memory_gpu_<size>.json after every setup (a target cut off at its limit keeps its rows).
# Copy what comes back to benchmarks/results/.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: run.sh TARGET[:SECONDS] ...  (TARGET: recipes, 0.5b, 1.5b, 7b)"; exit 2; }
OUT=${OUT:-/tmp/trl_irl_gpu}; mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "install failed: run benchmarks/gpu/wheels.sh here and carry .whl"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # no network there: never wait on a timeout
# seconds, not minutes, to learn that the image lacks something: versions, then one 4-bit LoRA step on the GPU
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt" || exit 4
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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/env.txt"
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m trl_irl.cli "$@"\n' > /tmp/bin/trl-irl && chmod +x /tmp/bin/trl-irl
export PATH=/tmp/bin:$PATH
status=0
for target in "$@"; do
  name=${target%%:*}; limit=${target#*:}; [ "$limit" = "$target" ] && limit=570
  echo "== $name (limit ${limit} s) =="
  start=$SECONDS
  case "$name" in
    recipes)  # timeout signals the whole process group, so the runs' own child processes stop too
      timeout "$limit" bash -c 'python3 -m pytest -p no:cacheprovider -q tests/test_cli.py -k "qlora or shared_base_4bit" \
        && trl-irl recipe=toy hydra.run.dir=/tmp/trl_irl_toy' > "$OUT/log_recipes.txt" 2>&1 ;;
    0.5b|1.5b) setups=policy_only,shared_base,separate ;;  # the 1.3x and 4x goals
    7b) setups=shared_base,policy_only,separate ;;  # the 20 GB goal first; separate last (it may run out of memory)
    *) echo "unknown target $name"; status=2; continue ;;
  esac
  rc=$?
  if [ "$name" != recipes ]; then
    timeout "$limit" python3 benchmarks/memory.py --models "qwen2.5-$name" --setups "$setups" --steps 1 \
      --workdir /tmp/trl_irl_models --out "$OUT/memory_gpu_$name.json" > "$OUT/log_$name.txt" 2>&1
    rc=$?
  fi
  echo "$name: exit $rc after $((SECONDS - start)) s"; tail -n 15 "$OUT/log_$name.txt"
  [ $rc -eq 0 ] || status=$rc
done
exit $status
