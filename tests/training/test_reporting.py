"""Validation panels: every per-image title is readable (none runs into an image), for any row count."""
from __future__ import annotations

import numpy as np
import pytest

from training import reporting


def _rows(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        target = rng.random((256, 256)).astype(np.float32)
        rows.append({"name": f"07{i}_{i}", "bicubic": target * 0.8, "output": target * 0.9, "target": target,
                     "psnr": 30.0 + i, "ssim": 0.81, "bicubic_psnr": 27.5, "bicubic_ssim": 0.70})
    return rows


def _overlap(a, b) -> bool:
    """Boxes share an area of more than a pixel (touching edges do not count)."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_panel_titles_clear_of_all_images(n):
    import matplotlib.pyplot as plt

    fig = reporting.panel_figure(_rows(n), title="run: pretrain epoch 2 (step 4) — bicubic | output | SIM target")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = fig.axes
        assert len(axes) == 3 * n
        frame = fig.bbox
        images = [ax.get_window_extent(renderer) for ax in axes]  # after the equal-aspect shrink
        titles = [ax.title.get_window_extent(renderer) for ax in axes]
        for k, (ax, box) in enumerate(zip(axes, titles)):
            label = ax.get_title().splitlines()[0]
            assert label.startswith(f"07{k // 3}_{k // 3} "), label  # the image name heads the title
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            hit = [m for m, img in enumerate(images) if _overlap(box, img)]
            assert not hit, f"{n} rows: title {ax.get_title()!r} runs into the image(s) of axes {hit}"
        suptitle = fig.get_suptitle() and fig._suptitle.get_window_extent(renderer)
        assert suptitle.y0 >= max(box.y1 for box in titles) and suptitle.y1 <= frame.y1
    finally:
        plt.close(fig)


def test_save_panel_writes_the_png_it_returns(tmp_path):
    import matplotlib.image as mpimg

    rgb = reporting.save_panel(tmp_path / "panels" / "p.png", _rows(2), title="t")
    png = mpimg.imread(tmp_path / "panels" / "p.png")
    assert png.shape[:2] == rgb.shape[:2] and rgb.dtype == np.uint8 and rgb.shape[2] == 3
    one = reporting.save_panel(tmp_path / "one.png", _rows(1), title="t")
    assert rgb.shape[0] > 1.8 * one.shape[0]  # each row gets its own height
    assert not list(tmp_path.rglob("*.tmp"))
