"""Perception: sources, sampling, lite observations.

OpenCV and its FFmpeg backend print their own warnings ("can't open camera by index", "moov atom
not found"); Onlooker reports one line of its own instead, so they are silenced before any module
of this package imports cv2."""

import os

os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
