import numpy as np
from PIL import Image

from assets.colorspace import hex_to_rgb, lab_to_rgb, rgb_to_hex, rgb_to_lab
from assets.palette import extract_palette


def stripes(colors_and_rows):
    rows = [np.tile(np.array(c, np.uint8), (n, 60, 1)) for c, n in colors_and_rows]
    return Image.fromarray(np.concatenate(rows))


def test_known_colours_and_shares():
    image = stripes([((255, 0, 0), 30), ((0, 0, 255), 20), ((0, 255, 0), 10)])
    palette = extract_palette(image)
    assert palette.colors == ["#FF0000", "#0000FF", "#00FF00"]
    assert np.allclose(palette.shares, [0.5, 1 / 3, 1 / 6], atol=0.02)


def test_at_most_five_and_shares_sum_to_one():
    rng = np.random.default_rng(1)
    palette = extract_palette(Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)))
    assert 3 <= len(palette.colors) <= 5
    assert abs(sum(palette.shares) - 1) < 1e-6
    assert all(c.startswith("#") and len(c) == 7 for c in palette.colors)
    assert palette.shares == sorted(palette.shares, reverse=True)


def test_single_colour_image_gives_that_colour_once():
    palette = extract_palette(Image.new("RGB", (20, 20), (12, 34, 56)))
    assert palette.colors == ["#0C2238"] and palette.shares == [1.0]


def test_deterministic():
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 255, (50, 50, 3), dtype=np.uint8))
    assert extract_palette(image) == extract_palette(image)


def test_lab_round_trip_and_reference_values():
    assert np.allclose(rgb_to_lab(np.array([1.0, 1.0, 1.0])), [100, 0, 0], atol=0.01)
    assert np.allclose(rgb_to_lab(np.array([1.0, 0.0, 0.0])), [53.24, 80.09, 67.20], atol=0.05)
    rgb = np.random.default_rng(3).random((100, 3))
    assert np.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-6)
    assert rgb_to_hex(hex_to_rgb("#12AB9F")) == "#12AB9F"
