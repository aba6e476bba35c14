#!/usr/bin/env bash
# The GPU figures of issue 16 (speed beside the reference, effectiveness at the paper's setting) as one
# prepared device call: a lent device gives 15 minutes per session, at most 10 per call, and only 64 MiB
# travel with the tree (CIFAR-10 is 178 MB), so the data is a 16,000-image balanced subset exported here.
#
#   here, once:   bash benchmarks/device_session.sh prepare      (writes the git-ignored .whl/, ~56 MB)
#   the device:   run(command="bash benchmarks/device_session.sh run", carry=[".whl"], timeout_s=600)
#
# What `run` does, in priority order, each step under its own time limit so that a slow step cannot eat
# the next one, every result written to $OUT as it finishes:
#   1. effectiveness.py --config gpu on the subset: ResNet-18 surrogate and victim, sample-wise, a round
#      cap of 10 and 10 victim epochs (the paper's 60 do not fit a call); test accuracy on the first 2,000
#      CIFAR-10 test images. The JSON records the cap, the epochs and whether the search converged.
#   2. reference_speed.py --config gpu on the same subset: 5 rounds of each side (the reference ended
#      after 150 s), throughput per round side by side, and the GPU habits.
# Nothing here is a figure until it has run: quote the JSONs it returns, with the device's name.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=16000
TEST=2000

case "${1:-}" in
prepare)
    mkdir -p .whl
    python3 -m pip download -q --no-deps -d .whl mlconfig==0.1.0
    rm -rf .whl/cifar16k .whl/Unlearnable-Examples
    python3 benchmarks/reference_speed.py --export-data .whl/cifar16k --images "$IMAGES" --test-images "$TEST"
    cp -r ../shared/reference/Unlearnable-Examples .whl/
    total=$(( $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) + $(du -sb .whl | cut -f1) ))
    echo "tree + .whl: $(( total / 1048576 )) MiB (the limit is 64)"
    [ "$total" -lt $(( 64 * 1048576 )) ] || { echo "too large to travel" >&2; exit 1; }
    ;;
run)
    OUT="${OUT:-/tmp/device-out}"
    mkdir -p "$OUT" /tmp/site
    # the device's python has torch and torchvision but no editable install of this package
    cp -r unlearnable /tmp/site/ && cp -r cli /tmp/site/unlearnable/cli && cp -r models /tmp/site/unlearnable/models
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/mlconfig-0.1.0-py3-none-any.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/device.txt" 2>&1 || true
    timeout 330 python3 benchmarks/effectiveness.py --config gpu --mode samplewise --data-root .whl/cifar16k \
        --max-rounds 10 --epochs 10 --out /tmp/effectiveness > "$OUT/effectiveness-gpu-16k.json" \
        2> "$OUT/effectiveness-gpu-16k.log" || echo "effectiveness: exit $?" >> "$OUT/device.txt"
    timeout 220 python3 benchmarks/reference_speed.py --config gpu --images "$IMAGES" --data-root .whl/cifar16k \
        --reference-dir .whl/Unlearnable-Examples --rounds 5 --reference-timeout 150 \
        --out "$OUT/reference-speed-gpu.json" > /dev/null 2> "$OUT/reference-speed-gpu.log" \
        || echo "reference_speed: exit $?" >> "$OUT/device.txt"
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
