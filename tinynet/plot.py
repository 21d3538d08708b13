"""Small line charts drawn with Pillow (no plotting library needed).

``line_chart(path, panels)`` draws one panel per entry, stacked vertically;
each panel is (title, {series name: (xs, ys)}) or (title, series, labels)
with ``labels = dict(x="step", y="error (%)")`` for the axis labels (give
the units).  A series given as (xs, ys, like) is drawn as rings, unjoined,
in the colour of the series named ``like`` (given before it): a measurement
of another kind beside a curve (a final score on more images).  Ticks fall
on round values (1, 2 or 5 x 10^k apart); each panel's legend stands right
of its plot, where it hides no data.  Enough for training curves.
"""

import math

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


def _ticks(lo, hi, n=5):
    """Evenly spaced values between lo and hi (for bar heights)."""
    if hi <= lo:
        hi = lo + 1.0
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def nice_ticks(lo, hi, n=5):
    """About ``n`` round tick values covering [lo, hi]: a step of 1, 2 or 5
    times a power of ten, the first tick at or below lo and the last at or
    above hi, so the axis can run from the first to the last tick.
    nice_ticks(0.13, 0.87) -> [0, 0.2, 0.4, 0.6, 0.8, 1]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"nice_ticks: limits must be finite, got {lo}, {hi}")
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(n - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _label(v):
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:.6g}"


def line_chart(path, panels, width=800, panel_height=300):
    margin_l, margin_r, margin_t, margin_b = 80, 30, 30, 55
    img = Image.new("RGB", (width, panel_height * len(panels)), "white")
    draw = ImageDraw.Draw(img)
    # the legends stand right of the plots, where they hide no data, all as wide as the widest,
    # so that stacked panels share their width (at most half the picture's: a longer name runs
    # past its edge)
    longest = max((len(name) for panel in panels for name in panel[1]), default=0)
    box_w = min(24 + 7 * longest, (width - margin_l - margin_r) // 2)
    for p, panel in enumerate(panels):
        title, series = panel[0], panel[1]
        labels = panel[2] if len(panel) > 2 else {}
        top = p * panel_height
        names = list(series)
        box_h = 16 * len(names) + 4
        x0, y0 = margin_l, top + margin_t
        x1, y1 = width - margin_r - box_w - 12, top + panel_height - margin_b
        # a NaN or infinite value (a loss that overflowed) has no place on the axis: not drawn
        points = [(x, y) for xs, ys, *_ in series.values() for x, y in zip(xs, ys) if math.isfinite(y)]
        draw.text((x0, top + 8), title, fill="black")
        draw.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
        if labels.get("x"):
            draw.text(((x0 + x1) / 2 - 3 * len(labels["x"]), y1 + 30), labels["x"], fill="black")
        if labels.get("y"):
            draw.text((5, y0 - 22), labels["y"], fill="black")
        if not points:
            continue
        xticks = nice_ticks(min(x for x, _ in points), max(x for x, _ in points))
        yticks = nice_ticks(min(y for _, y in points), max(y for _, y in points))
        xmin, xmax, ymin, ymax = xticks[0], xticks[-1], yticks[0], yticks[-1]

        def to_px(x, y):
            return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0),
                    y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

        for v in yticks:
            _, py = to_px(xmin, v)
            draw.line([x0 - 4, py, x0, py], fill="black")
            draw.line([x0 + 1, py, x1 - 1, py], fill=(235, 235, 235))  # light grid
            draw.text((5, py - 6), _label(v), fill="black")
        for v in xticks:
            px, _ = to_px(v, ymin)
            draw.line([px, y1, px, y1 + 4], fill="black")
            draw.text((px - 3 * len(_label(v)), y1 + 8), _label(v), fill="black")
        colour_of, fresh = {}, iter(COLOURS * len(series))
        for name, (xs, ys, *like) in series.items():
            colour = colour_of.get(like[0]) if like else None
            colour_of[name] = colour = colour or next(fresh)
            pts = [to_px(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
            if like:
                for px, py in pts:
                    draw.ellipse([px - 6, py - 6, px + 6, py + 6], outline=colour, width=2)
                continue
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for px, py in pts if len(pts) < 40 else []:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        lx, ly = x1 + 12, y0
        draw.rectangle([lx, ly, lx + box_w, ly + box_h], fill="white", outline=(180, 180, 180))
        for i, name in enumerate(names):
            colour, cy = colour_of[name], ly + 10 + 16 * i
            if len(series[name]) > 2:
                draw.ellipse([lx + 6, cy - 5, lx + 16, cy + 5], outline=colour, width=2)
            else:
                draw.line([lx + 4, cy, lx + 18, cy], fill=colour, width=3)
            draw.text((lx + 22, cy - 6), name, fill=colour)
    img.save(path)
    return path


def bar_chart(path, title, labels, series, width=900, height=420):
    """Grouped horizontal-axis bars: ``labels`` along x, ``series`` a dict
    name -> list of values (one per label; None for a missing bar)."""
    margin_l, margin_r, margin_t, margin_b = 70, 160, 30, 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = margin_l, margin_t, width - margin_r, height - margin_b
    draw.text((x0, 8), title, fill="black")
    draw.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
    values = [v for vs in series.values() for v in vs if v is not None]
    top = max(values) if values else 1.0
    for v in _ticks(0.0, top):
        py = y1 - v / top * (y1 - y0)
        draw.line([x0 - 4, py, x0, py], fill="black")
        draw.text((5, py - 6), f"{v:.3g}", fill="black")
    slot = (x1 - x0) / max(len(labels), 1)
    bar = slot * 0.8 / max(len(series), 1)
    for i, label in enumerate(labels):
        draw.text((x0 + i * slot + 2, y1 + 8 + 12 * (i % 2)), str(label), fill="black")
        for j, (name, vs) in enumerate(series.items()):
            v = vs[i]
            if v is None:
                continue
            left = x0 + i * slot + slot * 0.1 + j * bar
            draw.rectangle([left, y1 - v / top * (y1 - y0), left + bar - 1, y1],
                           fill=COLOURS[j % len(COLOURS)])
    for j, name in enumerate(series):
        draw.text((x1 + 10, y0 + 16 * j), name, fill=COLOURS[j % len(COLOURS)])
    img.save(path)
    return path


# ----------------------------------------------------------------------------
# Filters as pictures, in tower layout (the paper's Figure 3)
# ----------------------------------------------------------------------------

TILE_COLUMNS = 16   # 48 filters per tower = 3 rows of 16
GAP = 2             # pixels between tiles
LABEL_HEIGHT = 14   # pixels for a line of text


def stretch(a, constant=128):
    """Map an array's own minimum to 0 and maximum to 255 (uint8); a constant array becomes
    ``constant`` everywhere (grey for a filter; black for a ReLU map that is all zero)."""
    import numpy as np

    lo, hi = float(a.min()), float(a.max())
    if hi - lo < 1e-12:
        return np.full(a.shape, constant, np.uint8)
    return np.round((a - lo) / (hi - lo) * 255).astype(np.uint8)


def tower_grid(tiles, title, towers=2):
    """Lay out tiles (each an (h, w) or (h, w, 3) uint8 array) as the paper's Figure 3: the
    first tower's tiles in rows of 16 on top, the next tower's below, each block under a
    label.  Returns a Pillow RGB image."""
    h, w = tiles[0].shape[:2]
    per_tower = -(-len(tiles) // towers)
    rows = -(-per_tower // TILE_COLUMNS)                  # ceiling division
    block_w = TILE_COLUMNS * (w + GAP) + GAP
    block_h = LABEL_HEIGHT + rows * (h + GAP) + GAP
    canvas = Image.new("RGB", (max(block_w, 8 * len(title) + 2 * GAP), LABEL_HEIGHT + towers * block_h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, 1), title, fill="black")
    for tower in range(towers):
        top = LABEL_HEIGHT + tower * block_h
        first, last = tower * per_tower, min(len(tiles), (tower + 1) * per_tower)
        label = f"tower {tower}: filters {first}-{last - 1}" if towers > 1 else f"filters {first}-{last - 1}"
        draw.text((GAP, top + 1), label, fill="black")
        for i in range(last - first):
            r, c = divmod(i, TILE_COLUMNS)
            tile = Image.fromarray(tiles[first + i]).convert("RGB")
            canvas.paste(tile, (GAP + c * (w + GAP), top + LABEL_HEIGHT + r * (h + GAP)))
    return canvas


def filter_picture(weight, title, scale=4, towers=2):
    """First-layer filters as colour tiles in tower layout: weight (O, C, KH, KW) with C = 3
    (RGB) or 1 (grey) -> a Pillow image; each filter stretched to 0..255 on its own and
    enlarged ``scale`` times (nearest neighbour)."""
    import numpy as np

    tiles = []
    for f in np.asarray(weight):                       # f: (C, KH, KW)
        rgb = stretch(f.transpose(1, 2, 0))            # (KH, KW, C): an image of the filter
        if rgb.shape[2] == 1:
            rgb = np.repeat(rgb, 3, axis=2)
        tiles.append(np.kron(rgb, np.ones((scale, scale, 1), np.uint8)))
    return tower_grid(tiles, title, towers)
