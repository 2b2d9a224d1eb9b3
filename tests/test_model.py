import numpy as np
import pytest
import torch

from fair_edge.models.fair.losses import restoration_loss, ssim
from fair_edge.models.fair.scoring import AnomalyScorer, ScoringConfig, rgb_to_lab
from fair_edge.models.fair.unet import UNet, count_parameters


@pytest.mark.parametrize("width,expected", [(32, 4_322_307), (64, 17_270_787), (128, 69_046_275)])
def test_parameter_counts_match_the_paper(width, expected):
    assert count_parameters(UNet(width, in_channels=1)) == expected


def test_unet_shapes_and_init():
    torch.manual_seed(0)
    net = UNet(8, in_channels=2)
    out = net(torch.randn(2, 2, 64, 48))
    assert out.shape == (2, 3, 64, 48)
    conv = net.encoder[2][0][0]
    assert abs(float(conv.weight.detach().std()) - 0.02) < 0.003 and float(conv.bias.detach().abs().max()) == 0.0


def test_lab_matches_opencv():
    rng = np.random.default_rng(0)
    rgb = rng.random((16, 16, 3)).astype(np.float32)
    ours = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    theirs = cv2_lab(rgb)  # OpenCV's float Lab is table-interpolated (up to ~0.3 off); exact values below
    np.testing.assert_allclose(ours, theirs, atol=0.4)
    known = {(1, 0, 0): (53.24, 80.09, 67.20), (0, 1, 0): (87.73, -86.18, 83.18), (0, 0, 1): (32.30, 79.19, -107.86),
             (1, 1, 1): (100.0, 0.0, 0.0), (0.5, 0.5, 0.5): (53.39, 0.0, 0.0)}
    for rgb_value, lab in known.items():
        got = rgb_to_lab(torch.tensor(rgb_value, dtype=torch.float32).view(1, 3, 1, 1)).flatten().tolist()
        np.testing.assert_allclose(got, lab, atol=0.02)


def cv2_lab(rgb):
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)


def msgms_numpy(x: np.ndarray, y: np.ndarray, c: float = 0.0026) -> np.ndarray:
    """Independent single-scale GMS with scipy: (3, H, W) images -> (H, W) 1 - mean GMS."""
    from scipy.ndimage import correlate

    px = np.array([[1.0, 0, -1]] * 3) / 3.0
    out = []
    for ch in range(3):
        def mag(img):
            return np.sqrt(correlate(img, px, mode="constant") ** 2 + correlate(img, px.T, mode="constant") ** 2 + 1e-12)
        g1, g2 = mag(x[ch]), mag(y[ch])
        out.append((2 * g1 * g2 + c) / (g1**2 + g2**2 + c))
    return 1.0 - np.mean(out, axis=0)


def test_gradient_term_matches_independent_numpy():
    rng = np.random.default_rng(1)
    x, y = rng.random((2, 3, 32, 32)).astype(np.float64)
    scorer = AnomalyScorer(ScoringConfig(scales=1)).double()
    ours = scorer.gradient_term(torch.from_numpy(x)[None], torch.from_numpy(y)[None])[0, 0].numpy()
    np.testing.assert_allclose(ours, msgms_numpy(x, y), atol=1e-9)


def test_score_localises_a_difference():
    torch.manual_seed(0)
    original = torch.rand(1, 3, 64, 64)
    restored = original.clone()
    assert float(AnomalyScorer()(original, restored)[1]) < 1e-6
    restored[:, :, 40:48, 10:18] = 0.0
    anomaly_map, score = AnomalyScorer()(original, restored)
    peak = np.unravel_index(int(anomaly_map[0, 0].argmax()), (64, 64))
    assert 34 <= peak[0] <= 54 and 4 <= peak[1] <= 24
    assert abs(float(score[0]) - float(anomaly_map.max())) < 1e-7


def test_ssim_and_loss():
    x = torch.rand(2, 3, 32, 32)
    assert abs(float(ssim(x, x)) - 1.0) < 1e-5
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert float(ssim(x, noisy)) < 0.9
    assert float(restoration_loss(x, x)) < 1e-5 < float(restoration_loss(noisy, x))
