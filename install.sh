#!/usr/bin/env bash
# Installs robolearn and everything it needs on a fresh Debian/Ubuntu machine (Python >= 3.11).
#   bash install.sh          # the package
#   bash install.sh --test   # plus the test tools and the optional backends the tests cover
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[ "${1:-}" = "--test" ] && extras="[test,clip]"

# System libraries: Mesa EGL/OSMesa for headless MuJoCo rendering, libGL/glib for OpenCV,
# libusb for RealSense cameras.
pkgs="libegl1 libegl-mesa0 libgl1 libgles2 libosmesa6 libglib2.0-0 libusb-1.0-0"
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
