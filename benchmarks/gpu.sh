#!/usr/bin/env bash
# The GPU benchmarks as one script, for a lent machine with a fixed time budget (15 minutes held, start-up included):
# benchmark 1 (500 queries on a 2k context, cascade vs masked row vs recompute) and benchmark 5 (32K and 128K-token
# contexts, explorative vs approximate K=8, MFU of prefill) on the random-weight Llama-3.1-8B shape in bf16.
# Needs: torch with CUDA, transformers, this checkout installed (pip install -e . --no-deps), the data ($ICRL_DATA_DIR)
# and a saved tokenizer (common.save_bench_tokenizer) in ./tok. Each part has its own time limit, and its output is
# written as it comes to ${OUT:-gpu-results}/ so a part cut short still leaves its lines.
set -u
out="${OUT:-gpu-results}"
mkdir -p "$out"
python -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0))" \
    | tee "$out/versions.txt"
timeout 240 python benchmarks/bench_test_eval.py --model_name random-llama-3.1-8b --tokenizer tok \
    2>&1 | grep -v Loading | tee "$out/bench1.txt"
timeout 420 python benchmarks/bench_long_context.py --model_name random-llama-3.1-8b --tokenizer tok --steps 4 \
    --queries 64 2>&1 | grep -v Loading | tee "$out/bench5.txt"
