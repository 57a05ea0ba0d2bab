import math

import pytest

import jaxnm


def test_tile_counts():
    assert jaxnm.count_transposable_tiles(2, 4) == 90
    assert jaxnm.count_transposable_tiles(4, 8) == 116_963_796_250
    assert jaxnm.count_transposable_tiles(1, 4) == math.factorial(4)  # permutation matrices


@pytest.mark.parametrize(
    "n, m, kind, expected",
    [
        (2, 4, "unstructured", 1.833e18),
        (2, 4, "nm", 2.821e12),
        (4, 8, "nm", 5.765e14),
        (2, 4, "transposable", 6.561e7),
        (4, 8, "transposable", 1.170e11),
    ],
)
def test_brief_8x8_region(n, m, kind, expected):
    value = 10 ** jaxnm.mask_diversity(n, m, 64, kind=kind)
    assert value == pytest.approx(expected, rel=1e-3)


def test_large_layer_in_log_space():
    d = jaxnm.mask_diversity(4, 8, 4096 * 4096, kind="transposable")
    assert d == pytest.approx(4096 * 4096 / 64 * math.log10(116_963_796_250))


def test_bad_input():
    with pytest.raises(ValueError, match="kind"):
        jaxnm.mask_diversity(2, 4, 64, kind="blocky")
    with pytest.raises(ValueError, match="size"):
        jaxnm.mask_diversity(2, 4, 8, kind="transposable")
