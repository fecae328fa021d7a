#!/usr/bin/env bash
# The wheels benchmarks/gpu.py needs on the GPU machine that its image lacks, into .whl/ (git-ignored), for its
# Python 3.12 on x86-64. The image brings torch (CUDA), tokenizers, safetensors, huggingface-hub, accelerate,
# numpy, pandas, pyarrow, pyyaml, ninja, psutil, py-cpuinfo, msgpack and einops; these travel, at the versions
# this environment (envs/requirements.txt) runs, so the GPU runs the code the tests run:
#   transformers, peft        pinned here (the image's transformers 5.17 predates the cache API lmadapt reads)
#   deepspeed                 an sdist: built here as a pure-Python wheel, no ops compiled (DS_BUILD_OPS=0);
#                             with torch_adam it needs no JIT build there either
#   hjson, pydantic (+ core, annotated-types, typing-inspection)   DeepSpeed's own needs missing there
#   jsonschema (+ specifications, referencing, rpds-py)            lmadapt.config's
# Usage: benchmarks/gpu-wheels.sh [PYTHON]   (default .venv/bin/python; its pip reaches the package registry)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
OUT=.whl
LIMIT_MIB=64  # what travels to the device with the working tree

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=()
for name in transformers peft hjson pydantic pydantic-core annotated-types typing-inspection jsonschema \
            jsonschema-specifications referencing rpds-py; do
  pins+=("$name==$(version "$name")")
done

rm -rf "$OUT"
mkdir -p "$OUT"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$OUT" "${pins[@]}"
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT" "deepspeed==$(version deepspeed)"

size_mib=$(du -sm "$OUT" | cut -f1)
ls -1 "$OUT"
echo "$OUT: ${size_mib} MiB of ${LIMIT_MIB}"
if [ "$size_mib" -gt "$LIMIT_MIB" ]; then
  echo "gpu-wheels.sh: $OUT is ${size_mib} MiB, over the device's ${LIMIT_MIB} MiB" >&2
  exit 1
fi
