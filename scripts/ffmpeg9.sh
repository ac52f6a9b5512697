# Sourced by scripts/test.sh and scripts/bench.sh: ffmpeg 9 from PyPI (imageio-ffmpeg, a static
# build) into a venv, exported as FFMPEG9. It writes what Debian's ffmpeg 5.1 cannot: Enhanced
# RTMP v2 (HEVC, AV1 and Opus in FLV) and multitrack FLV (a teacher's ladder).
FFMPEG9_VENV=${FFMPEG9_VENV:-$HOME/.cache/classcast/ffmpeg9-venv}
[ -x "$FFMPEG9_VENV/bin/python" ] || python3 -m venv "$FFMPEG9_VENV"
"$FFMPEG9_VENV/bin/python" -c 'import imageio_ffmpeg' 2>/dev/null \
  || "$FFMPEG9_VENV/bin/pip" install -q --disable-pip-version-check imageio-ffmpeg==0.8.1
FFMPEG9=$("$FFMPEG9_VENV/bin/python" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')
export FFMPEG9
"$FFMPEG9" -hide_banner -version | sed -n 1p
