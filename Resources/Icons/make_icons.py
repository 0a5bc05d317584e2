"""Draw the 128x128 icons: a deformed grid (module) and the same over expert-coloured tiles (extension).

    python Resources/Icons/make_icons.py SHMoARegExtension/Resources/Icons/SHMoARegistration.png \
        Resources/Icons/SHMoARegExtension.png
"""
import sys
import numpy as np
from PIL import Image, ImageDraw

def draw(path, tiles: bool):
    scale = 4  # supersample, then downscale for anti-aliasing
    n = 128 * scale
    img = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([4 * scale, 4 * scale, n - 4 * scale, n - 4 * scale], radius=18 * scale, fill=(24, 38, 64, 255))
    colors = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (213, 94, 0)]
    lo, hi = 16 * scale, n - 16 * scale
    def warp(x, y):
        u = (x - lo) / (hi - lo); v = (y - lo) / (hi - lo)
        dx = 7 * scale * np.sin(np.pi * v) * np.sin(np.pi * u * 2)
        dy = 7 * scale * np.sin(np.pi * u) * np.sin(np.pi * v)
        return x + dx, y + dy
    cells = 6
    step = (hi - lo) / cells
    if tiles:
        for i in range(cells):
            for j in range(cells):
                c = colors[(i * 2 + j * 3 + (i * j) % 3) % 4]
                corners = [warp(lo + a * step, lo + b * step) for a, b in ((i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1))]
                d.polygon(corners, fill=c + (150,))
    for k in range(cells + 1):
        t = np.linspace(lo, hi, 60)
        d.line([warp(lo + k * step, y) for y in t], fill=(255, 255, 255, 255), width=3 * scale)
        d.line([warp(x, lo + k * step) for x in t], fill=(255, 255, 255, 255), width=3 * scale)
    img.resize((128, 128), Image.LANCZOS).save(path)

draw(sys.argv[1], tiles=False)
draw(sys.argv[2], tiles=True)
