#!/usr/bin/env bash
# Snakemake runs this in the environment it built from lmadapt.yaml (`--sdm conda`): install the lmadapt package
# (the jobs' `lmadapt` command) from the checkout Snakemake runs in, found at or above the working directory
# (`--directory rehearsal` works too).
set -euo pipefail
root=$PWD
until [ -f "$root/workflow/lmadapt/__init__.py" ]; do
  if [ "$root" = / ]; then
    echo "lmadapt.post-deploy.sh: no lmadapt checkout at or above $PWD" >&2
    exit 1
  fi
  root=$(dirname "$root")
done
pip install --quiet --no-deps -e "$root"
