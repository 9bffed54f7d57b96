#!/usr/bin/env bash
# Here (a machine with a package registry), once per session that is lent a GPU: the wheels that the device image
# lacks (trl, bitsandbytes, datasets and its dill/multiprocess, hydra) or holds at an untested version (transformers,
# peft), for its Python 3.12, into .whl/ (git-ignored through .git/info/exclude). bitsandbytes is repacked with its
# CPU and CUDA 13 libraries only (43 MB -> 7 MB), so the tree and the wheels travel within the tool's 64 MiB.
#   bash benchmarks/gpu/wheels.sh      then: run(command="bash benchmarks/gpu/run.sh 0.5b", carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .git/info .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PACKAGES="trl==1.16.0 bitsandbytes==0.50.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 transformers==5.24.0
          peft==0.21.2 hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3"
PLATFORMS=""
for n in 2_28 2_27 2_24 2_17; do PLATFORMS+=" --platform manylinux_${n}_x86_64"; done
for p in $PACKAGES; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLATFORMS --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$p" 2>/dev/null \
  || python3 -m pip download -q --no-deps --python-version 3.12 --implementation cp $PLATFORMS -d .whl "$p"
done
for sdist in .whl/*.tar.gz; do  # a pure-Python sdist (antlr4): built into a wheel here, nothing to build there
  [ -e "$sdist" ] && python3 -m pip wheel -q --no-deps -w .whl "$sdist" && rm "$sdist"
done
python3 - <<'PY'
import glob, re, zipfile
from pathlib import Path

wheel = Path(glob.glob(".whl/bitsandbytes-*.whl")[0])
drop = re.compile(r"bitsandbytes/libbitsandbytes_(cuda1[12]\d|rocm\d+|xpu\d+)\.so$")  # keep cpu, cuda130, cuda132
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if drop.search(item.filename):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(keepends=True) if not drop.search(l.split(b",")[0].decode()))
        dst.writestr(item, data)
slim.replace(wheel)
PY
ls -la .whl && du -sh .whl
