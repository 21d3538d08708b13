"""Small line charts drawn with Pillow (no plotting library needed).

``line_chart(path, panels)`` draws one panel per entry, stacked vertically;
each panel is (title, {series name: (xs, ys)}).  Enough for training curves.
"""

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


def _ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1.0
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def line_chart(path, panels, width=800, panel_height=300):
    margin_l, margin_r, margin_t, margin_b = 70, 150, 30, 40
    img = Image.new("RGB", (width, panel_height * len(panels)), "white")
    draw = ImageDraw.Draw(img)
    for p, (title, series) in enumerate(panels):
        top = p * panel_height
        x0, y0 = margin_l, top + margin_t
        x1, y1 = width - margin_r, top + panel_height - margin_b
        points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if y == y]  # drop NaN
        draw.text((x0, top + 8), title, fill="black")
        draw.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
        if not points:
            continue
        xmin, xmax = min(x for x, _ in points), max(x for x, _ in points)
        ymin, ymax = min(y for _, y in points), max(y for _, y in points)
        xmax = xmax if xmax > xmin else xmin + 1
        ymax = ymax if ymax > ymin else ymin + 1

        def to_px(x, y):
            return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0),
                    y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

        for v in _ticks(ymin, ymax):
            _, py = to_px(xmin, v)
            draw.line([x0 - 4, py, x0, py], fill="black")
            draw.text((5, py - 6), f"{v:.3g}", fill="black")
        for v in _ticks(xmin, xmax):
            px, _ = to_px(v, ymin)
            draw.line([px, y1, px, y1 + 4], fill="black")
            draw.text((px - 10, y1 + 8), f"{v:.3g}", fill="black")
        for i, (name, (xs, ys)) in enumerate(series.items()):
            colour = COLOURS[i % len(COLOURS)]
            pts = [to_px(x, y) for x, y in zip(xs, ys) if y == y]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for px, py in pts if len(pts) < 40 else []:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
            draw.text((x1 + 10, y0 + 16 * i), name, fill=colour)
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
