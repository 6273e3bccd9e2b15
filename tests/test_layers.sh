#!/usr/bin/env bash
# The folders are layers (README, "Layout"): each may include only from itself and the layers below it. A folder
# that reaches up (nn/ including moe/, optim/ including experiments/, ...) fails this test with the offending lines.
set -uo pipefail
cd "$(dirname "$0")/.."
declare -A allowed=(
  [core]="core"
  [nn]="core nn"
  [moe]="core nn moe"
  [optim]="core nn optim"
  [data]="core data"
  [dist]="core nn dist"
)
layers="core|nn|moe|optim|data|dist|experiments|tests"
fail=0
for layer in "${!allowed[@]}"; do
  [ -d "$layer" ] || { echo "FAILED: no folder $layer/"; fail=1; continue; }
  pattern=$(echo "${allowed[$layer]}" | tr ' ' '|')
  # "x/..." or <x/...>, also through ../
  bad=$(grep -rnE "#include *[\"<](\.\./)*($layers)/" "$layer" | grep -vE "#include *[\"<](\.\./)*($pattern)/")
  if [ -n "$bad" ]; then
    echo "FAILED: $layer/ may include only from ${allowed[$layer]}:"; echo "$bad"; fail=1
  fi
done
[ $fail = 0 ] && echo "layers: core, nn, moe, optim, data and dist include only from themselves and below"
exit $fail
