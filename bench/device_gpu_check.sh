#!/usr/bin/env bash
# One prepared GPU check for a lent accelerator machine (used for issue 6's note). It needs, beside the repo:
# onnxruntime-gpu unpacked from /tmp/ortparts/* + .ort5/* (a split tar.xz of the cp312 wheel), the serving
# wheels for Python 3.12 in .whl/, bench images in .benchimg/{png,dcm}/. Results go to $OUT.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site
cat /tmp/ortparts/part_* .ort5/part_* > /tmp/ort.tar.xz && md5sum /tmp/ort.tar.xz
tar xJf /tmp/ort.tar.xz -C /tmp/site || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L; echo "cores: $(nproc)"
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.__file__, o.get_available_providers())"
probe='from service.engine import open_session; from models.registry import Registry
m = Registry("registry").model_set().classifier; print(open_session(m, providers="cuda").providers[0])'
first=$(python3 -c "$probe" 2>/dev/null | tail -1)
echo "CUDA session via preload_dlls: $first"
if [ "$first" != "CUDAExecutionProvider" ]; then
  export LD_LIBRARY_PATH=$(python3 -c "import glob, site; print(':'.join(glob.glob(site.getsitepackages()[0] + '/nvidia/*/lib')))")
  echo "retry with LD_LIBRARY_PATH over the nvidia wheels: $(python3 -c "$probe" 2>&1 | tail -1)"
fi
timeout 100 python3 bench/gpu_providers.py --seconds 1 > "$OUT/gpu_providers.json" 2> "$OUT/gpu_providers.err"
head -c 2500 "$OUT/gpu_providers.json"; echo
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs tests/service/test_gpu.py tests/service/test_engine.py \
  tests/service/test_app.py tests/service/test_server_process.py 2>&1 | tail -8
for run in "auto png 1" "auto dcm 1" "cpu png 4"; do
  set -- $run
  gpus=auto; [ "$1" = cpu ] && gpus=none
  XRAY_PROVIDERS=$1 XRAY_GPUS=$gpus timeout 90 python3 bench/serve_bench.py --images ".benchimg/$2" --workers "$3" \
    --seconds 6 --concurrency 64 --out "$OUT" --tag "h200-$1-$2-w$3" 2>&1 | tail -10
done
