"""Pictures as PNG (Pillow): grids of sampled images, and receptive-field heat maps of what a
model can see.

    python -m fastar.plot blind-spot docs/blind_spot.png

writes the classic figure: a 5-layer PixelCNN stack's receptive field, with its blind spot,
beside a 5-layer Gated PixelCNN stack's full field, for the centre pixel of an 11x11 image.
"""

import argparse
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from fastar import testing
from fastar._io import atomic_write

_CELL = 28  # pixels per image position
_TITLE = 22  # pixels above each panel for its title


def _panel(heat: Tensor, output_pixel: Tuple[int, int], title: str):
    from PIL import Image, ImageDraw

    H, W = heat.shape
    img = Image.new("RGB", (W * _CELL + 1, H * _CELL + _TITLE + 1), "white")
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), title, fill="black")
    peak = float(heat.max()) or 1.0
    for r in range(H):
        for c in range(W):
            x0, y0 = c * _CELL, _TITLE + r * _CELL
            level = float(heat[r, c]) / peak
            fill = (int(255 - 200 * level), int(255 - 150 * level), 255) if level else "white"
            if (r, c) == tuple(output_pixel):
                fill = (220, 40, 40)
            draw.rectangle([x0, y0, x0 + _CELL, y0 + _CELL], fill=fill, outline=(180, 180, 180))
    return img


def save_image_grid(images: Tensor, path: str, columns: int, num_values: int) -> None:
    """Writes integer images (N, C, H, W) with values in [0, num_values) as one PNG grid of
    `columns` columns, 1-pixel borders; C = 1 grey or C = 3 colour."""
    from PIL import Image

    n, C, H, W = images.shape
    rows = -(-n // columns)
    grid = torch.zeros(C, rows * (H + 2), columns * (W + 2), dtype=torch.uint8)
    scale = 255 // max(num_values - 1, 1)
    for k in range(n):
        r, c = divmod(k, columns)
        grid[:, r * (H + 2) + 1 : r * (H + 2) + 1 + H, c * (W + 2) + 1 : c * (W + 2) + 1 + W] = (
            images[k] * scale).to(torch.uint8)
    array = grid[0] if C == 1 else grid.permute(1, 2, 0)
    image = Image.fromarray(array.numpy())
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def save_heatmaps(panels: Sequence[Tuple[str, Tensor, Tuple[int, int]]], path: str) -> None:
    """Writes panels side by side: (title, (H, W) heat map, output pixel (row, col) in red)."""
    from PIL import Image

    images = [_panel(heat, pixel, title) for title, heat, pixel in panels]
    gap = 16
    out = Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1),
                            max(i.height for i in images)), "white")
    x = 0
    for i in images:
        out.paste(i, (x, 0))
        x += i.width + gap
    atomic_write(path, lambda f: out.save(f, format="PNG"))


def receptive_field(module: nn.Module, input_shape: Sequence[int],
                    output_index: Tuple[int, ...], path: str,
                    title: Optional[str] = None) -> Tensor:
    """Writes a PNG heat map of the input pixels that influence module(x)[output_index] (input
    (N, C, H, W); darker = more input channels reach the output) and returns the (H, W) map."""
    field = testing.receptive_field(module, input_shape, output_index)
    heat = field[output_index[0]].sum(dim=0).float()
    save_heatmaps([(title or type(module).__name__, heat, tuple(output_index[-2:]))], path)
    return heat


def blind_spot_figure(path: str, layers: int = 5, size: int = 11) -> List[Tensor]:
    """PixelCNN's blind spot beside Gated PixelCNN's full field (see the module docstring)."""
    centre = (0, 0, size // 2, size // 2)
    panels = []
    for title, model in (("PixelCNN, %d layers" % layers, testing.PixelCNNStack(layers)),
                         ("Gated PixelCNN, %d layers" % layers,
                          testing.GatedPixelCNNStack(layers))):
        heat = testing.receptive_field(model, (1, 1, size, size), centre)[0, 0].float()
        panels.append((title, heat, centre[2:]))
    save_heatmaps(panels, path)
    return [heat for _, heat, _ in panels]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastar.plot",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="figure", required=True)
    blind = sub.add_parser("blind-spot", help="PixelCNN's blind spot vs Gated PixelCNN")
    blind.add_argument("path")
    blind.add_argument("--layers", type=int, default=5)
    args = parser.parse_args(argv)
    blind_spot_figure(args.path, args.layers)
    print("wrote %s" % args.path)


if __name__ == "__main__":
    main()


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def save_curves(curves: Dict[str, Sequence[Tuple[float, float]]], path: str, x_label: str,
                y_label: str, x_scale: float = 1.0, size: Tuple[int, int] = (720, 420)) -> None:
    """Writes a line chart of named curves of (x, y) points (x multiplied by x_scale), each
    point marked, with the axes' ranges and a legend, as a PNG."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 60, 200, 20, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    points = [(x * x_scale, y) for c in curves.values() for x, y in c]
    if points:
        xs, ys = zip(*points)
        x0, x1 = 0.0, max(max(xs), 1e-9)
        y0, y1 = min(ys), max(ys)
        if y1 - y0 < 1e-9:
            y0, y1 = y0 - 1, y1 + 1

        def at(x, y):
            return (left + (x - x0) / (x1 - x0) * (width - left - right),
                    top + (y1 - y) / (y1 - y0) * (height - top - bottom))

        for k, (name, curve) in enumerate(curves.items()):
            colour = _COLOURS[k % len(_COLOURS)]
            xy = [at(x * x_scale, y) for x, y in curve]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for px, py in xy:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
            ly = top + 16 * k
            draw.rectangle([width - right + 10, ly + 3, width - right + 20, ly + 11], fill=colour)
            draw.text((width - right + 24, ly), name, fill="black")
        draw.text((left, height - bottom + 4), "%.3g" % x0, fill="black")
        draw.text((width - right - 40, height - bottom + 4), "%.3g" % x1, fill="black")
        draw.text((4, top), "%.1f" % y1, fill="black")
        draw.text((4, height - bottom - 12), "%.1f" % y0, fill="black")
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)],
              fill="black")
    draw.text((left + 60, height - bottom + 20), x_label, fill="black")
    draw.text((left + 4, 2), y_label, fill="black")
    atomic_write(path, lambda f: img.save(f, format="PNG"))
