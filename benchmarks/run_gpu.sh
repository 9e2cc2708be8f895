#!/usr/bin/env bash
# Everything that needs a GPU, in one call: install, GPU tests, all benchmarks -> JSON in $OUT.
#   bash benchmarks/run_gpu.sh            # tests + benchmarks
#   FASTGEN_GPU_STEPS=bench bash benchmarks/run_gpu.sh   # conv benchmarks only
#   FASTGEN_GPU_STEPS=tests,sampling bash benchmarks/run_gpu.sh
# steps: tests, bench (conv + diffusion), families (flows, stylegan, attention, vq), train,
# sampling, wavenet, profile.  The default, tests,bench,profile, was sized for one 10-minute call
# before the families existed (unmeasured since); give families, train and sampling calls of their own.
# On the device machine nothing can be downloaded: fastgen installs without build isolation
# or dependencies (torch, triton and numpy are already there).
set -uo pipefail
OUT=${OUT:-$(pwd)/gpu_out}
mkdir -p "$OUT"
STEPS=${FASTGEN_GPU_STEPS:-tests,bench,profile}
export PYTHONUNBUFFERED=1
status=0

python3 -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/install.log" 2>&1 \
  || { echo "install failed"; cat "$OUT/install.log"; exit 1; }
# peers the benchmarks compare against, carried as wheels (pure Python; torch is already there)
python3 -m pip install -q --no-deps benchmarks/wheels/*.whl >>"$OUT/install.log" 2>&1 || echo "peer wheels not installed"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
fastgen info | tee -a "$OUT/gpu.txt"

if [[ $STEPS == *tests* ]]; then
  FASTGEN_TEST_GPU=1 FASTGEN_AUTOTUNE=0 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 25
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if [[ $STEPS == *bench* ]]; then
  fastgen bench conv --json "$OUT/conv.json" 2>&1 | tee "$OUT/bench_conv.log" || status=1
  # the same with Triton's normal launch path: what the direct launch (kernels/_launch.py) saves
  FASTGEN_DIRECT_LAUNCH=0 fastgen bench conv --dtypes bfloat16 --json "$OUT/conv_normal_launch.json" \
    >"$OUT/bench_conv_normal_launch.log" 2>&1 || status=1
  fastgen bench diffusion --json "$OUT/diffusion.json" 2>&1 | tee "$OUT/bench_diffusion.log" || status=1
fi
if [[ $STEPS == *families* ]]; then   # the model-family ops of issues 9-12 (a call of its own)
  fastgen bench flows --json "$OUT/flows.json" 2>&1 | tee "$OUT/bench_flows.log" || status=1
  fastgen bench stylegan --json "$OUT/stylegan.json" 2>&1 | tee "$OUT/bench_stylegan.log" || status=1
  fastgen bench attention --json "$OUT/attention.json" 2>&1 | tee "$OUT/bench_attention.log" || status=1
  fastgen bench vq --json "$OUT/vq.json" 2>&1 | tee "$OUT/bench_vq.log" || status=1
fi
if [[ $STEPS == *train* ]]; then
  # fastgen train throughput (items/s, peak memory): Gated PixelCNN and the DDPM UNet, global batch 64,
  # on one GPU and, when there are several, on all of them through torchrun (DDP)
  python3 benchmarks/bench_train.py --json "$OUT/train.json" 2>&1 | tee "$OUT/bench_train.log" || status=1
  NGPU=$(nvidia-smi -L | wc -l)
  if (( NGPU > 1 )); then
    torchrun --standalone --nproc-per-node "$NGPU" benchmarks/bench_train.py --json "$OUT/train_${NGPU}gpu.json" \
      >"$OUT/bench_train_${NGPU}gpu.log" 2>&1 || status=1
  fi
fi
if [[ $STEPS == *sampling* ]]; then   # minutes: the naive samplers are the slow anchors
  fastgen bench sampling --json "$OUT/sampling.json" 2>&1 | tee "$OUT/bench_sampling.log" || status=1
fi
if [[ $STEPS == *wavenet* ]]; then
  fastgen bench wavenet --json "$OUT/wavenet.json" 2>&1 | tee "$OUT/bench_wavenet.log" || status=1
fi
if [[ $STEPS == *profile* ]]; then
  python3 benchmarks/profile_conv.py >"$OUT/profile_conv.txt" 2>&1 || status=1
fi
exit $status
