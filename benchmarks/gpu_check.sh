#!/usr/bin/env bash
# GPU check of driftloop's pipeline training (issue 3), one command, under 5 minutes, on one NVIDIA GPU.
#
#   benchmarks/gpu_check.sh              # on the GPU machine
#   DEVICE=cpu benchmarks/gpu_check.sh   # the same steps on the CPU: checks the script where there is no GPU
#
# Needs: this repository's .venv (`make setup`) with a CUDA build of torch >= 2.13 ALREADY INSTALLED in it. This script
# installs nothing: the set-up pins the CPU wheel (constraints/cpu.txt), and GPU machines are often offline.
# Install yours first, for example:
#   .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
# Environment: DEVICE (cuda | cpu, default cuda), ROWS (training rows for the throughput runs, default 60000 on
# cuda, 8000 on cpu), PYTHON (default .venv/bin/python).
#
# It runs:
#   1. exactness on the device: the one-process multi-stage mode (training.launcher single_process: every stage
#      in one process, as on one GPU, where NCCL refuses two ranks) for every multi-stage schedule at 2 and 4
#      stages, against one-stage training on the same device: losses and weights within 1e-5
#      (tests/test_training.py, pinned to the device by DRIFTLOOP_TEST_DEVICE);
#   2. throughput (samples/s) of the demo model (driftloop/configs/flights.yaml: hidden 64, 4 blocks, batch 512)
#      on the demo's real data: plain single-stage training vs one-process pipelines of 2 and 4 stages.
# Prints a short labelled report; exits non-zero when a step fails (1: a check failed, 2: no usable device).
set -uo pipefail

cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-.venv/bin/python}"
export GX_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 MLFLOW_ENABLE_TELEMETRY=false PREFECT_SERVER_ANALYTICS_ENABLED=false
START=$(date +%s)

say() { printf '%s\n' "$*"; }
fail() { say "GPU CHECK FAILED: $1"; exit "${2:-1}"; }

case "$DEVICE" in cuda|cpu) ;; *) fail "DEVICE must be cuda or cpu, not '$DEVICE'" 2 ;; esac
[ -x "$PYTHON" ] || fail "$PYTHON not found: run 'make setup' first (or set PYTHON)" 2

say "== driftloop GPU check (DEVICE=$DEVICE) =="
# torch.version.cuda is None on a CPU build; torch.cuda.is_available() needs a driver and a visible device.
"$PYTHON" - "$DEVICE" <<'PY' || fail "no usable $DEVICE device (see above)" 2
import sys

import torch

device = sys.argv[1]


def refuse(reason: str) -> None:
    print(reason, flush=True)  # on stdout, in order with the report
    sys.exit(1)


print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuda available {torch.cuda.is_available()}")
if device == "cuda":
    if torch.version.cuda is None:
        refuse("this torch is a CPU build: install a CUDA build of torch into .venv first (see the script header)")
    if not torch.cuda.is_available():
        refuse("torch sees no CUDA device: check nvidia-smi and CUDA_VISIBLE_DEVICES")
    print(f"GPU 0: {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s) visible")
from driftloop.training.pipeline import SINGLE_PROCESS_MIN_TORCH  # noqa: E402

if torch.torch_version.TorchVersion(torch.__version__) < SINGLE_PROCESS_MIN_TORCH:
    refuse(f"the one-process multi-stage mode needs torch >= {SINGLE_PROCESS_MIN_TORCH}, this is {torch.__version__} "
           "(its schedules send between stages of one process and fail): install a newer CUDA build of torch")
PY

say ""
say "-- 1. exactness on $DEVICE: one process, every multi-stage schedule, 2 and 4 stages, vs one stage --"
DRIFTLOOP_TEST_DEVICE="$DEVICE" timeout 150 "$PYTHON" -m pytest -q -p no:cacheprovider -p no:warnings \
    tests/test_training.py -k "test_one_process_runs_every_stage_and_reproduces_one_process" 2>&1 | tail -n 15
EXACT=${PIPESTATUS[0]}
[ "$EXACT" -eq 0 ] || fail "exactness tests on $DEVICE (pytest exit $EXACT)"
say "exactness on $DEVICE: PASSED"

say ""
say "-- 2. throughput of the demo model on $DEVICE: plain single stage vs one-process pipeline --"
DEVICE="$DEVICE" timeout 120 "$PYTHON" - <<'PY' || fail "throughput runs on $DEVICE"
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from driftloop.config import demo_config_path, parse_config
from driftloop.datasets import load_flights
from training.trainer import train

device = os.environ["DEVICE"]
rows = int(os.environ.get("ROWS") or (60000 if device == "cuda" else 8000))
flights = load_flights()
frame = flights[flights["time_hour"] < pd.Timestamp("2013-04-01", tz="UTC")].head(rows + 2000)
frame, holdout = frame.iloc[:rows], frame.iloc[rows:]
raw = yaml.safe_load(demo_config_path().read_text())
runs = [  # (label, stages, schedule, microbatches)
    ("plain single stage (full batch)", 1, "1F1B", 1),
    ("single stage, 4 microbatches", 1, "1F1B", 4),
    ("one process, 2 stages, Interleaved1F1B", 2, "Interleaved1F1B", 4),
    ("one process, 4 stages, Interleaved1F1B", 4, "Interleaved1F1B", 4),
    ("one process, 4 stages, LoopedBFS (GPipe order)", 4, "LoopedBFS", 4),
]
print(f"demo model hidden {raw['model']['hidden']}, {raw['model']['blocks']} blocks, batch "
      f"{raw['training']['batch_size']}; {rows:,} training rows, 1 epoch each")
results = []
with tempfile.TemporaryDirectory() as state:
    raw.update(state_dir=state)
    raw["training"].update(epochs=1, launcher="single_process", device=device)
    config = parse_config(raw, "gpu check config")
    for label, stages, schedule, microbatches in runs:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = train(frame, config, holdout, stages=stages, schedule=schedule, microbatches=microbatches,
                       progress=False)
        seconds = time.perf_counter() - started
        assert result.device == device, f"{label} ran on {result.device}, not {device}"
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
        results.append((label, result.telemetry.samples_per_second, result.final_loss, peak, seconds))
base = results[0][1]
print(f"{'run':48} {'samples/s':>11} {'vs plain':>9} {'final loss':>11} {'peak MiB':>9} {'wall s':>7}")
for label, rate, loss, peak, seconds in results:
    print(f"{label:48} {rate:11,.0f} {rate / base:9.2f} {loss:11.4f} {peak:9.1f} {seconds:7.1f}")
PY
say ""
say "== GPU CHECK PASSED on $DEVICE in $(( $(date +%s) - START )) s =="
