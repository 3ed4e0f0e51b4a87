#!/usr/bin/env bash
# The GPU check of issue 13, as one prepared script for a lent GPU machine (no network there).
#
#   bash bench/gpu/run.sh            # from the repository root; results in $OUT (default ./gpu-out)
#
# 1. the consolidation phase itself, bf16, one process and (with >= 2 GPUs) torchrun on all GPUs (nccl);
# 2. bench/gpu/phase_gpu.py: distillation step time + MFU, vLLM vs HF generate tokens/s on the same prompts.
# Each part has its own time limit so a hang in one still leaves the others' numbers.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/operator:${PYTHONPATH:-} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OUT
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt"
$PY -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>/dev/null | tee -a "$OUT/gpu.txt"
$PY -c "import vllm; print('vllm', vllm.__version__)" 2>/dev/null | tee -a "$OUT/gpu.txt" || echo "vllm not installed" | tee -a "$OUT/gpu.txt"

# 2. step time, MFU, generation throughput.
timeout 300 $PY bench/gpu/phase_gpu.py 2>&1 | tail -40 | tee "$OUT/phase_gpu.log"

# 1. the phase end to end in bf16 (tiny generation: checks the GPU code path, not speed).
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
for Z in 0 3; do
  timeout 240 $PY bench/distributed/step_time.py --steps 10 --batch 8 --zero "$Z" --precision bf16 \
    --procs 1 $([ "$GPUS" -ge 2 ] && echo 2) --out "$OUT/step_time_zero$Z.json" 2>&1 | tail -8 | tee "$OUT/step_time_zero$Z.log"
done
ls -l "$OUT"
