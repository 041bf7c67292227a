"""Frames as terminal cells: each cell shows two pixels, the upper half block in the foreground colour
over the lower pixel as background. Pure functions of the image, cheap enough for 5+ updates/s."""

from __future__ import annotations

import cv2
import numpy as np
from rich.style import Style
from rich.text import Text


def half_blocks(image_bgr: np.ndarray | None, width: int, height: int) -> Text:
    """`width` x `height` cells (2*height pixel rows) of the image, aspect kept by padding."""
    if image_bgr is None or width < 2 or height < 1:
        return Text("no frame yet", style="dim")
    h, w = image_bgr.shape[:2]
    scale = min(width / w, 2 * height / h)
    tw, th = max(1, int(w * scale)), max(2, int(h * scale) // 2 * 2)
    small = cv2.resize(image_bgr, (tw, th), interpolation=cv2.INTER_AREA)
    rgb = small[:, :, ::-1]
    text = Text()
    for y in range(0, th, 2):
        for x in range(tw):
            top, bottom = rgb[y, x], rgb[y + 1, x]
            text.append("▀", Style(color=f"rgb({top[0]},{top[1]},{top[2]})",
                                   bgcolor=f"rgb({bottom[0]},{bottom[1]},{bottom[2]})"))
        if y + 2 < th:
            text.append("\n")
    return text
