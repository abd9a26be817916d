#!/usr/bin/env bash
# Downloads, here, the wheels that the GPU image lacks for benchmarks/gpu_composer_check.py: Composer,
# wandb and everything they need that is not already on that image (the device reaches no registry).
# They land in .whl/ (ignored by git), which the device call carries:  carry=[".whl"]
# Versions are the ones this checkout's .venv resolved (so Composer and wandb are the tested ones);
# the list of packages already on the image is the device's documented list (KINDS.md), copied below.
# Usage, from the repository root:  bash benchmarks/gpu_wheels.sh     (about 27 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
rm -rf .whl && mkdir -p .whl
# Missing on the image (Python 3.12), found by walking Requires-Dist from mosaicml and wandb and
# leaving out what the image has; rerun that walk (below) when the image or the pins change.
MISSING="mosaicml mosaicml-cli coolname torch-optimizer pytorch-ranger importlib-metadata wandb cwevals
platformdirs pydantic pydantic-core annotated-types typing-inspection opentelemetry-api opentelemetry-sdk
opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-common opentelemetry-proto
opentelemetry-semantic-conventions googleapis-common-protos argcomplete arrow backoff gql graphql-core
prompt-toolkit questionary ruamel-yaml termcolor validators wcwidth tzdata tenacity distro sniffio"
pins=()
for name in $MISSING; do
  version=$($PIP show "$name" 2>/dev/null | sed -n "s/^Version: //p" || true)
  pins+=("$name${version:+==$version}")
done
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
du -sh .whl
