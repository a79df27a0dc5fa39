#!/usr/bin/env bash
# GPU acceptance: the whole chain on one GPU machine that has torch but none of the project's other dependencies
# and no network. Three subcommands; the first two run where the package index is reachable, the last on the GPU.
#
#   bash bench/gpu_acceptance.sh probe > bench/device.txt        # ON THE DEVICE, one short call: its python,
#                                                                # platform and installed packages (pip freeze)
#   bash bench/gpu_acceptance.sh prepare bench/device.txt        # HERE: bench/wheelhouse/ with what the device
#                                                                # lacks, for its python and platform
#   bash bench/gpu_acceptance.sh run [--toy] [--device D] [--out DIR] [--budget SECONDS]   # ON THE DEVICE
#
# `run` installs the wheelhouse (no index), then runs, each step bounded by `timeout` and recorded (seconds, exit
# code) in DIR/acceptance.md (default $OUT, else bench/acceptance):
#   a. bench/input_pipeline.py on the device (raw and JPEG shards, alexnet and resnet50 at 224);
#   b. `mlflow run . -e pretrain` with recipe world-long on the embedded world, then every benchmark on that
#      backbone and on random init (`transfer all`), with wall times;
#   c. `reproduce --seeds 3` on the embedded world with world-long pre-training, as far as the budget allows;
#      every finished step is kept in the store, so a second `run` continues it.
# `--toy` runs every step at toy size (tiny world, smoke recipe, quick benchmarks, a few images): the test suite
# runs `run --toy --device cpu` so that a device call can fail only for reasons of the device.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
command=${1:-}
shift || true

case "$command" in
probe)
  python3 - <<'EOF'
import platform, sys, sysconfig
print(f"python {sys.version_info.major}.{sys.version_info.minor}")
print(f"platform {sysconfig.get_platform()}")
try:
    import torch
    print(f"torch {torch.__version__} cuda {torch.version.cuda} devices {torch.cuda.device_count()}")
except ImportError:
    print("torch absent")
EOF
  python3 -m pip list --format=freeze 2>/dev/null | sed 's/^/have /'
  ;;

prepare)
  probe=${1:?usage: gpu_acceptance.sh prepare DEVICE_PROBE_FILE}
  pyver=$(awk '$1 == "python" {print $2}' "$probe")
  plat=$(awk '$1 == "platform" {print $2}' "$probe" | tr -- '-.' '__')
  wheelhouse=$ROOT/bench/wheelhouse
  rm -rf "$wheelhouse" && mkdir -p "$wheelhouse"
  # the project's pinned dependencies, without the ones the device has (torch, torchvision, nvidia-*, ...)
  python3 - "$probe" > "$wheelhouse/requirements.txt" <<'EOF'
import re, sys, tomllib
have = {re.split(r"[=<>]", l.split()[1])[0].lower().replace("_", "-")
        for l in open(sys.argv[1]) if l.startswith("have ")}
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    name = re.split(r"[=<>\[ ]", dep)[0].lower().replace("_", "-")
    if name not in have and name not in ("torch", "torchvision") and not name.startswith("nvidia"):
        print(dep)
EOF
  python3 -m pip download --quiet --dest "$wheelhouse" --only-binary=:all: --python-version "$pyver" \
    --platform "$plat" $(printf -- '--platform manylinux_2_%s_x86_64 ' 17 24 27 28 31 34) --platform any \
    -r "$wheelhouse/requirements.txt"
  python3 -m pip wheel --quiet --no-deps --wheel-dir "$wheelhouse" .
  # drop what the device already has, whatever pulled it in
  python3 - "$probe" "$wheelhouse" <<'EOF'
import pathlib, re, sys
have = {re.split(r"[=<>]", l.split()[1])[0].lower().replace("_", "-")
        for l in open(sys.argv[1]) if l.startswith("have ")}
binary, total = [], 0
for wheel in sorted(pathlib.Path(sys.argv[2]).glob("*.whl")):
    name = wheel.name.split("-")[0].lower().replace("_", "-")
    if name in have or name in ("torch", "torchvision") or name.startswith("nvidia"):
        wheel.unlink()
        continue
    total += wheel.stat().st_size
    if not wheel.name.endswith("-none-any.whl"):
        binary.append(wheel.name)
print(f"wheelhouse: {total / 2**20:.1f} MiB (the run tool carries at most 64 MiB)")
if binary:
    print("binary wheels (the device lacks these compiled packages): " + ", ".join(binary))
if total > 64 * 2**20:
    print("error: the wheelhouse is over the 64 MiB the run tool carries; carry fewer packages (the largest are "
          "usually pyarrow, scipy, scikit-learn and pandas) or use a device image that has them", file=sys.stderr)
    sys.exit(2)
EOF
  ;;

run)
  toy=0 device=cuda out=${OUT:-$ROOT/bench/acceptance} budget=540
  while [ $# -gt 0 ]; do
    case "$1" in
    --toy) toy=1 ;;
    --device) device=$2; shift ;;
    --out) out=$2; shift ;;
    --budget) budget=$2; shift ;;
    *) echo "unknown option $1; expected --toy, --device D, --out DIR, --budget SECONDS" >&2; exit 2 ;;
    esac
    shift
  done
  mkdir -p "$out"
  if [ -d "$ROOT/bench/wheelhouse" ] && ! python3 -c "import imagenet_transfer, mlflow" 2>/dev/null; then
    python3 -m pip install --quiet --no-index --find-links "$ROOT/bench/wheelhouse" \
      -r "$ROOT/bench/wheelhouse/requirements.txt" "$ROOT"/bench/wheelhouse/imagenet_transfer-*.whl
  fi
  export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$out/mlflow.db}
  export MLFLOW_EXPERIMENT_NAME=${MLFLOW_EXPERIMENT_NAME:-gpu-acceptance}
  start=$SECONDS
  report=$out/acceptance.md
  {
    echo "# GPU acceptance ($([ $toy = 1 ] && echo toy || echo full) size, device $device)"
    echo
    python3 -c "import platform, torch; g = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'; print(f'host {platform.node()}, torch {torch.__version__}, GPU {g}')"
    echo
    echo "| step | seconds | exit code |"
    echo "|---|---|---|"
  } > "$report"

  step() {  # step NAME SECONDS COMMAND...: bounded by the time left, recorded whatever happens
    local name=$1 limit=$2
    shift 2
    local left=$((budget - (SECONDS - start)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 0 ]; then
      echo "| $name | - | skipped (budget spent) |" >> "$report"
      return 0
    fi
    local t0=$SECONDS rc=0
    timeout "$limit" "$@" > "$out/$name.log" 2>&1 || rc=$?
    echo "| $name | $((SECONDS - t0)) | $rc |" >> "$report"
    echo "$name: exit $rc in $((SECONDS - t0)) s (log $out/$name.log)"
    return 0
  }

  if [ $toy = 1 ]; then
    world=$out/world
    [ -e "$world/world.json" ] || imagenet-transfer synth --size tiny --out "$world" > "$out/synth.log" 2>&1
    pipeline=(--images 48 --archs small --resolution 32 --batch-size 8 --steps 2 --warmup 1 --workers 0)
    pretrain=(-P source="$world/imagenet" -P recipe=smoke -P model_name=acceptance-small)
    transfer=(--quick --data "$world")
    grid=(--smoke --seeds 1 --only E1 --world "$world")
  else
    pipeline=()
    pretrain=(-P recipe=world-long -P model_name=acceptance-small-long)
    transfer=()
    # the paper grid with world-long pre-training (8000 x 64 images: features that transfer on the world)
    python3 - "$out/grid.yaml" <<'EOF2'
import sys, yaml
grid = yaml.safe_load(open("configs/paper.yaml"))
grid["scales"]["world"].update(recipe="world-long", pretrain={})
yaml.safe_dump(grid, open(sys.argv[1], "w"))
EOF2
    grid=(--grid "$out/grid.yaml" --seeds 3)
  fi
  step input_pipeline 240 python3 bench/input_pipeline.py --device "$device" --out "$out/input_pipeline.md" \
    "${pipeline[@]}"
  step pretrain 300 mlflow run . -e pretrain --env-manager local -P device="$device" "${pretrain[@]}"
  model=models:/$(sed -n 's/.*model_name=//p' <<< "${pretrain[*]}" | cut -d' ' -f1)@current
  step transfer_pretrained 300 imagenet-transfer transfer all --backbone "$model" --device "$device" "${transfer[@]}"
  step transfer_random 300 imagenet-transfer transfer all --backbone random:small@32 --device "$device" \
    "${transfer[@]}"
  step reproduce 600 imagenet-transfer reproduce --device "$device" "${grid[@]}"
  cat "$report"
  ;;

*)
  echo "usage: gpu_acceptance.sh probe | prepare DEVICE_PROBE_FILE | run [--toy] [--device D] [--out DIR]" >&2
  exit 2
  ;;
esac
