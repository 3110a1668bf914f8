#!/usr/bin/env bash
# Installs vlmfo1 with every extra into the active Python environment.
# torch is pinned by .ci/constraints.txt so pip never pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_CONSTRAINT="$PWD/.ci/constraints.txt"
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[all,dev]"
# rapidocr (extra `ocr`) depends on opencv-python-headless, and both wheels install the same
# `cv2` package: whichever pip wrote last wins. Remove the plain builds and reinstall contrib
# so that `cv2.ximgproc` (selective search) exists, then check it.
python -m pip uninstall -q -y opencv-python opencv-python-headless opencv-contrib-python opencv-contrib-python-headless
python -m pip install -q --force-reinstall --no-deps "opencv-contrib-python-headless>=4.8"
python -c "import cv2; cv2.ximgproc.segmentation.createSelectiveSearchSegmentation(); print('cv2', cv2.__version__, 'with ximgproc')"
