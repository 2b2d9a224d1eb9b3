"""The families' map blur: two 1-D Convs give the k x k Gaussian's result."""

import pytest
import torch
import torch.nn.functional as F

from fair_edge.models.kernels import GaussianBlur, gaussian_taps


@pytest.mark.parametrize("sigma", [0.5, 4.0, 16.0])
def test_the_separable_blur_equals_the_2d_gaussian_with_replicate_padding(sigma):
    taps = gaussian_taps(sigma).double()
    assert len(taps) == 2 * int(torch.ceil(torch.tensor(2 * sigma))) + 1 and abs(float(taps.sum()) - 1.0) < 1e-6
    maps = torch.rand(2, 1, 40, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = len(taps) // 2
    reference = F.conv2d(F.pad(maps, (p, p, p, p), mode="replicate"), torch.outer(taps, taps)[None, None])
    blurred = GaussianBlur(sigma).double()(maps)
    assert blurred.shape == maps.shape
    torch.testing.assert_close(blurred, reference, rtol=0, atol=1e-12)
    # a constant map stays constant (the taps sum to one, the border is replicated)
    assert torch.allclose(GaussianBlur(sigma)(torch.full((1, 1, 9, 9), 3.0)), torch.tensor(3.0))


def test_sigma_zero_is_no_blur():
    maps = torch.rand(1, 1, 8, 8)
    assert GaussianBlur(0.0)(maps) is maps and gaussian_taps(0.0).tolist() == [1.0]
