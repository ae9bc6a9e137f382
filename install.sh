#!/usr/bin/env bash
# Installs robolearn and everything it needs on a fresh Debian/Ubuntu machine (Python >= 3.11).
#   bash install.sh          # the package
#   bash install.sh --test   # plus the test tools, the optional backends the tests cover (clip, viz), and lerobot
#   bash install.sh --lerobot  # the package plus lerobot, for `robolearn data export/import`
set -euo pipefail
cd "$(dirname "$0")"
extras=""
lerobot=0
[ "${1:-}" = "--test" ] && extras="[test,clip,deploy,viz]" && lerobot=1
[ "${1:-}" = "--lerobot" ] && lerobot=1

# System libraries: Mesa EGL/OSMesa for headless MuJoCo rendering, libGL/glib for OpenCV,
# libusb for RealSense cameras.
pkgs="libegl1 libegl-mesa0 libgl1 libgles2 libosmesa6 libglib2.0-0 libusb-1.0-0"
# FFmpeg's libraries for torchcodec, lerobot's default video decoder.
[ "$lerobot" = 1 ] && pkgs="$pkgs ffmpeg"
if command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

py=${PYTHON:-python3}
pip=("$py" -m pip install -q --disable-pip-version-check)
# torch first, pinned, so the resolver does not pull a multi-GB CUDA build where a CPU wheel is at hand.
"$py" -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0" || "${pip[@]}" "torch>=2.2"
"${pip[@]}" -e ".${extras}"
# robosuite needs opencv-python; a second OpenCV wheel (-headless, pulled by other tools) breaks cv2.
if "$py" -m pip show opencv-python-headless >/dev/null 2>&1; then
  "$py" -m pip uninstall -y -q opencv-python-headless && "${pip[@]}" --force-reinstall --no-deps opencv-python
fi
"$py" -c "import robolearn.sim, robolearn.policies, zarr, cv2; print('robolearn installed:', robolearn.__version__)"

# lerobot 0.4.4, the newest on Python 3.11, pins torch<2.11 (a plain install would replace the core's torch
# with a multi-GB CUDA build) and huggingface-hub<0.36, datasets<5. Its dataset code runs on the core's
# torch, so it goes in without its pins, with what that code imports: datasets 5 (the first to accept the
# hub 1.x/2.x beside it), PyAV, and the torchvision/torchcodec builds made for the installed torch.
# `pip install robolearn[lerobot]` is the plain route where torch may follow lerobot's pins.
if [ "$lerobot" = 1 ]; then
  "${pip[@]}" --no-deps "lerobot==0.4.4"
  "${pip[@]}" "datasets==5.2.0" "av>=15,<16"
  minor=$("$py" -c "import torch; print(torch.__version__.split('.')[1])")
  "${pip[@]}" --no-deps "torchcodec==0.${minor}.*"
  if ! "$py" -c "import torchvision" 2>/dev/null; then
    if "$py" -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then
      # CPU-only torch: PyPI's torchvision is a CUDA build whose compiled ops cannot load here, and an
      # importable-but-broken torchvision breaks other libraries (transformers' image processors). Keep it
      # outside site-packages; robolearn.interop adds it for lerobot alone.
      tvdir=$("$py" -c "from robolearn.interop.lerobot import TORCHVISION_DIR; print(TORCHVISION_DIR)")
      [ -d "$tvdir/torchvision" ] || "${pip[@]}" --no-deps --target "$tvdir" "torchvision==0.$((minor + 15)).*"
    else
      "${pip[@]}" --no-deps "torchvision==0.$((minor + 15)).*"
    fi
  fi
  "$py" -c "from robolearn.interop.lerobot import lerobot_modules; print('lerobot installed:', lerobot_modules()['version'])"
fi
