"""PatchCore: "Towards Total Recall in Industrial Anomaly Detection" (Roth et al., CVPR 2022).

No network is trained. A frozen ImageNet backbone describes every patch of the normal images by
locally aggregated mid-level features; a greedy coreset of those patch features is the memory bank;
a test patch's anomaly is its distance to the nearest bank feature.

    colour (B, 3, S, S) -> normalise (the backbone's own statistics, or ImageNet's) -> frozen backbone
      -> taps (default strides 8 and 16, the layer2 / layer3 analogues; or all three, 4 + 8 + 16) -> local
      average over each window of ``local_windows`` (default 3x3: each patch sees its neighbourhood; several
      windows keep fine and coarse detail side by side; the zero padding at the border counted, as PyTorch's
      and the paper's reference code do) -> the coarser taps upsampled to the finest grid (h = S/stride) -> each
      (window, tap) block averaged over channel groups to embed_dim / (taps x windows) channels (the paper's adaptive
      average pooling, a fixed matrix), or kept whole -> concatenated; with ``colour_weight`` w > 0 three more
      channels, the patch's chromaticity (RGB minus its grey mean, pooled to the grid) times w; with
      ``position_weight`` p > 0 two more, the patch's grid position (x, y) in [0, p] (matches then stay near
      the same place of a fixtured part): (B, h*h, D) patch features
      -> ||b||^2 - 2 a.b for every bank row b (one MatMul against the bank) -> the nearest row (a two-level
      minimum: ReduceMin over groups of about sqrt(M) rows, ArgMin) -> + ||a||^2 -> sqrt -> patch map (B, 1, h, h)
      -> bilinear to S x S -> Gaussian blur (sigma 4 px, the paper's) -> anomaly_map (B, 1, S, S)
    score = max of anomaly_map (with ``score_top_k`` k > 1: the mean of its k highest pixels), times (with ``reweight``) the paper's weight
      w = 1 - softmax(-)[0] over the distances from the most anomalous test patch to its nearest bank
      feature m* and to m*'s own nearest bank neighbours (eq. 7): a patch whose nearest normal feature
      sits in a sparse part of the bank counts less than one far from a dense cluster. The weight needs m* and
      at least one neighbour: a new fit refuses ``neighbours`` 1 with reweight on, and a neighbour table of one
      column (an older checkpoint fitted so, whose weight was 0 for every image, or a bank of one row) scores
      without it.

Every step is an ONNX operator (MatMul, ReduceMin, ArgMin, TopK, Gather, Resize, Conv); the bank is a buffer, so it is
an initializer of the exported graph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fair_edge.errors import ConfigError
from fair_edge.models.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD
from fair_edge.models.family import refuse_unknown_settings
from fair_edge.models.kernels import GaussianBlur

TAPS = (1, 2)  # default taps, of the backbone's three maps (strides 4, 8, 16): the layer2 / layer3 analogues
LOCAL_WINDOWS = (3,)  # default patch neighbourhoods p of the local aggregation (the paper's p = 3)
MAX_WINDOW = 9  # pixels of the finest tap's grid
MAX_TOP_K = 65_536  # pixels of the map averaged for the image score
MAX_POSITION_WEIGHT = 10_000.0  # feature units across the image
MAX_COLOUR_WEIGHT = 10_000.0  # feature units per unit of chromaticity (RGB in [0, 1])
MAX_SHIFTS = 4  # views per axis scored by score_shifts
BANK_LIMIT = 200_000  # rows
# the 3 x 3 local average's border: "counted" divides every window by its full size, the zero padding included
# (PyTorch's avg_pool2d default and the paper's reference code); "excluded" divides by the pixels inside the
# map, which the family did before issue #27 and which lost up to 0.3 image AUROC (BENCHMARKS.md, "suite")
LOCAL_PADS = ("counted", "excluded")
NORMALISATIONS = ("backbone", "imagenet")  # the backbone's own input statistics, or ImageNet's for every backbone
CHANNEL_REDUCTIONS = ("grouped", "none")  # channel groups averaged to embed_dim, or each tap's channels kept whole
# the views of each training image the bank is fitted on, beside the image itself: the image dimensions flipped
# (3 = columns: mirrored left-right; 2 = rows: upside down; both = a half turn). Only for surfaces without an
# orientation: a bank holding mirrored normals accepts a part fitted mirrored or upside down.
BANK_FLIPS = {"none": (), "left-right": ((3,),), "left-right+up-down": ((3,), (2,), (2, 3))}
# settings added after checkpoints were written, with the value those checkpoints were fitted with (the
# dataclass default is what a new fit gets)
FITTED_BEFORE = {"local_pad": "excluded"}
# the bank (float32) and its neighbour table (int64) are initializers of the one ONNX file, which protobuf caps at
# 2 GB; with the backbone (Wide-ResNet-50-2 to layer3: 0.28 GB) and an FP16 copy never beside it, 1 GB leaves room
BANK_BYTES_LIMIT = 1_000_000_000


@dataclass(frozen=True)
class PatchcoreSettings:
    """backbone: key of ``BACKBONES``. embed_dim: patch feature channels (half from each tap).
    coreset_ratio: share of the training patches kept in the bank; bank_max: at most this many rows
    (bank memory = rows x embed_dim x 4 bytes: 10 000 x 128 = 5.1 MB). reweight: the paper's image-score
    weighting by the nearest bank row's neighbourhood (whole-frame models only: a tiled frame's score is the
    maximum of its stitched map). neighbours: bank rows the reweighting compares, the nearest row included (2..64
    for a fit with reweight on; 1 only with reweight off). smooth_sigma: Gaussian blur of the map, pixels.
    taps: two or three of the backbone's maps (0, 1, 2 = strides 4, 8, 16), finest first; the patch grid is
    the finest tap's. local_windows: 1 to 3 odd window sizes (pixels of the finest tap's grid, ascending;
    1 = no aggregation); each patch feature is the concatenation of its descriptors over all windows, so
    embed_dim must divide by len(taps) x len(local_windows).
    score_top_k: the image score is the mean of the k highest pixels of the blurred map (1 = its max;
    at most the map's S x S pixels are used; whole-frame models only: a tiled frame's score is the maximum of
    its stitched map). position_weight: 0 = off; p > 0 appends each patch's grid
    position (x, y), scaled to [0, p] across the image, as two feature channels, so a test patch is matched
    to bank features from about the same place: for fixtured parts (ELPV cells, p = 100 with Lite0, whose
    nearest-patch distances are about 11: a shift of one 16 x 16-grid cell costs 6.7). local_pad: the
    local average's border: the zero padding counted (PyTorch's and the paper's) or excluded (the family
    before issue #27). normalisation: the backbone's own input statistics or ImageNet's. channel_reduction:
    each tap averaged over channel groups to embed_dim / len(taps) (grouped), or its channels kept whole (none:
    Lite0's taps 1 + 2 give 40 + 112 = 152 per window; embed_dim then unused). The paper's PatchCore
    (``PLAIN``): padding counted, ImageNet statistics, channels whole, the coreset not capped. Checkpoints
    written before a setting existed load with the value they were fitted with (``FITTED_BEFORE``, else
    the default, which is what the model then did). bank_flips: the bank is fitted on each training image
    and its flipped views: left-right adds its mirror image, left-right+up-down also the image upside down and
    turned half round; fit time only, one coreset and bank_max over all views; only for surfaces without an
    orientation (the bank then accepts a part fitted mirrored or upside down).
    colour_weight: 0 = off; w > 0 appends three channels, the patch's chromaticity (RGB in [0, 1] minus its
    grey mean per pixel, averaged over the finest tap's stride and a 3 x 3 window of that grid) times w, so a
    tint that keeps brightness moves the feature (a grey frame's chromaticity is 0).
    score_shifts: 1 = off; n > 1 scores n x n views of the image, shifted by multiples of the finest tap's stride / n
    pixels (edge pixels repeated), and averages their maps placed back on the image: the patch grid sampled n times
    more densely with the same features, at n x n times the scoring cost; scoring only (the bank is unchanged), and
    the reweighting uses the unshifted view."""

    backbone: str = "efficientnet_lite0"
    embed_dim: int = 128
    coreset_ratio: float = 0.1
    bank_max: int = 10_000
    reweight: bool = True
    neighbours: int = 9
    smooth_sigma: float = 4.0
    taps: tuple[int, ...] = TAPS
    local_windows: tuple[int, ...] = LOCAL_WINDOWS
    score_top_k: int = 1
    position_weight: float = 0.0
    local_pad: str = "counted"
    normalisation: str = "backbone"
    channel_reduction: str = "grouped"
    bank_flips: str = "none"
    colour_weight: float = 0.0
    score_shifts: int = 1

    def __post_init__(self) -> None:
        for name, allowed in (("local_pad", LOCAL_PADS), ("normalisation", NORMALISATIONS),
                              ("channel_reduction", CHANNEL_REDUCTIONS), ("bank_flips", tuple(BANK_FLIPS))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; found {getattr(self, name)!r}.")
        for name in ("taps", "local_windows"):  # JSON gives lists
            value = getattr(self, name)
            if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                object.__setattr__(self, name, tuple(value))
            else:
                raise ConfigError(f"{name} must be a sequence of integers; found {value!r}.")
        if len(self.taps) not in (2, 3) or list(self.taps) != sorted(set(self.taps)) or not set(self.taps) <= {0, 1, 2}:
            raise ConfigError(f"taps must be two or three of the backbone's maps 0, 1, 2 (strides 4, 8, 16), finest "
                              f"first, e.g. (1, 2) or (0, 1, 2); found {self.taps}.")
        w = self.local_windows
        if not 1 <= len(w) <= 3 or any(v % 2 == 0 or not 1 <= v <= MAX_WINDOW for v in w) or list(w) != sorted(set(w)):
            raise ConfigError(f"local_windows must be 1 to 3 distinct odd sizes in 1..{MAX_WINDOW}, ascending, "
                              f"e.g. (3,) or (1, 3); found {w}.")
        if not 1 <= self.score_top_k <= MAX_TOP_K:
            raise ConfigError(f"score_top_k must be in 1..{MAX_TOP_K} map pixels; found {self.score_top_k}.")
        for name, limit in (("position_weight", MAX_POSITION_WEIGHT), ("colour_weight", MAX_COLOUR_WEIGHT)):
            if not 0.0 <= getattr(self, name) <= limit:
                raise ConfigError(f"{name} must be in [0, {limit:g}] (0 = off); found {getattr(self, name)}.")
        if self.bank_flips != "none" and self.position_weight > 0:
            raise ConfigError(f"bank_flips={self.bank_flips!r} needs position_weight=0 (found {self.position_weight:g}): "
                              "the position channels tie each patch to its place on a fixtured part, and a flipped "
                              "view moves every patch. Drop one of the two settings.")
        stride = 4 * 2 ** self.taps[0]
        if not 1 <= self.score_shifts <= MAX_SHIFTS or stride % self.score_shifts:
            raise ConfigError(f"score_shifts must be in 1..{MAX_SHIFTS} (1 = off) and divide the finest tap's stride "
                              f"({stride} px with taps={self.taps}); found {self.score_shifts}.")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}; found {self.backbone!r}.")
        if self.embed_dim < 2 or self.embed_dim % 2 or self.embed_dim > 2048:
            raise ConfigError(f"embed_dim must be even and in 2..2048; found {self.embed_dim}.")
        blocks = len(self.taps) * len(self.local_windows)
        if self.channel_reduction == "grouped" and self.embed_dim % blocks:
            raise ConfigError(f"embed_dim must divide by len(taps) x len(local_windows) = {blocks} (one channel block "
                              f"per tap and window); found embed_dim={self.embed_dim} with taps={self.taps}, "
                              f"local_windows={self.local_windows}.")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ConfigError(f"coreset_ratio must be in (0, 1] (share of training patches kept); found {self.coreset_ratio}.")
        if not 1 <= self.bank_max <= BANK_LIMIT:
            raise ConfigError(f"bank_max must be in 1..{BANK_LIMIT} rows; found {self.bank_max}.")
        if not 1 <= self.neighbours <= 64:
            raise ConfigError(f"neighbours must be in 1..64; found {self.neighbours}.")
        if not 0.0 <= self.smooth_sigma <= 32.0:
            raise ConfigError(f"smooth_sigma must be in [0, 32] pixels; found {self.smooth_sigma}.")
        if self.bank_bytes > BANK_BYTES_LIMIT:
            raise ConfigError(f"a bank of bank_max={self.bank_max} rows x {self.feature_dim} features takes "
                              f"{self.bank_bytes / 1e9:.2f} GB; at most {BANK_BYTES_LIMIT / 1e9:.0f} GB fits in one ONNX "
                              "file (protobuf's 2 GB limit). Lower bank_max or embed_dim.")

    def check_fit(self) -> None:
        """ConfigError for settings a checkpoint may hold but a new fit must not: ``neighbours`` 1 with ``reweight``
        (the weight 1 - softmax([d])[0] is 0, so every score was 0 and no part was ever rejected)."""
        if self.reweight and self.neighbours < 2:
            raise ConfigError(f"neighbours must be in 2..64 with reweight on (the paper's weight compares the nearest "
                              f"bank row with its bank neighbours, at least one; with none every image scores 0); "
                              f"found neighbours={self.neighbours}. Raise --neighbours (default 9), or turn the "
                              f"weighting off with --no-reweight (--set reweight=false).")

    @property
    def descriptor_dim(self) -> int:
        """Channels of the local descriptor: embed_dim, or the taps' whole channels per window."""
        if self.channel_reduction == "grouped":
            return self.embed_dim
        channels = BACKBONES[self.backbone].channels
        return len(self.local_windows) * sum(channels[t] for t in self.taps)

    @property
    def feature_dim(self) -> int:
        """Columns of a patch feature and of a bank row: the descriptor, plus the three colour channels and the two
        position channels when on."""
        return self.descriptor_dim + (3 if self.colour_weight > 0 else 0) + (2 if self.position_weight > 0 else 0)

    @property
    def input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per RGB channel of the input normalisation."""
        if self.normalisation == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        spec = BACKBONES[self.backbone]
        return spec.mean, spec.std

    @property
    def bank_bytes(self) -> int:
        """Bytes of the largest bank these settings allow, as the graph holds it (``memory_bytes``)."""
        return memory_bytes(self.bank_max, self.feature_dim, self.neighbours)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PatchcoreSettings":
        """Settings from a checkpoint, bundle or options; a field the dict lacks takes the value checkpoints
        were fitted with before it existed (``FITTED_BEFORE``), else the default. A key that is no field (a newer
        release's setting) is a ConfigError naming it (``refuse_unknown_settings``), never dropped."""
        fields = asdict(cls())
        refuse_unknown_settings("PatchCore", data, fields)
        return cls(**{k: data[k] if k in data else FITTED_BEFORE.get(k, v) for k, v in fields.items()})


def fitted_before(data: Mapping[str, Any]) -> dict[str, Any]:
    """{field: value} of the FITTED_BEFORE fields that settings ``data`` (a checkpoint's) lack: what it was fitted with."""
    return {k: v for k, v in FITTED_BEFORE.items() if k not in data}


# the paper's construction (Roth et al. 2022, as its reference code and anomalib build it) on any backbone:
# `replace(PatchcoreSettings(), **PLAIN)` or `--set local_pad=counted --set normalisation=imagenet
# --set channel_reduction=none --set bank_max=200000`
PLAIN = {"local_pad": "counted", "normalisation": "imagenet", "channel_reduction": "none", "bank_max": BANK_LIMIT,
         "score_top_k": 1, "position_weight": 0.0, "local_windows": (3,), "reweight": True, "bank_flips": "none",
         "colour_weight": 0.0, "score_shifts": 1}


def flipped_views(images: torch.Tensor, bank_flips: str) -> list[torch.Tensor]:
    """(B, C, H, W) -> [the images, then each view of ``BANK_FLIPS[bank_flips]``], each (B, C, H, W)."""
    return [images] + [torch.flip(images, dims) for dims in BANK_FLIPS[bank_flips]]


def channel_pooling(channels: int, out: int) -> torch.Tensor:
    """(out, channels) float32: row j averages input channels [floor(j C / out), ceil((j + 1) C / out)),
    the windows of a 1-D adaptive average pool (channels repeat when out > channels)."""
    m = torch.zeros(out, channels)
    for j in range(out):
        lo, hi = (j * channels) // out, -((-(j + 1) * channels) // out)
        m[j, lo:hi] = 1.0 / (hi - lo)
    return m


class PatchFeatures(nn.Module):
    """Locally aware patch features. taps [(B, C1, h, h) finest, (B, C2, h', h') coarser, ...] float32 (two or
    three) -> (B, D, h, h) float32: for each window of ``windows`` a local average of every tap (stride 1, zero
    padding counted or excluded per ``local_pad``; window 1 is the tap itself), the coarser ones upsampled to
    the finest grid; each of the len(taps) x len(windows) blocks pooled over channel groups to embed_dim /
    (len(taps) x len(windows)) (``grouped``: D = embed_dim) or kept whole (``None``: D = (C1 + C2 + ...) x
    len(windows)), concatenated (window-major: [fine w1, coarse w1, fine w2, ...])."""

    def __init__(self, channels: tuple[int, ...], embed_dim: int | None, windows: tuple[int, ...] = LOCAL_WINDOWS,
                 local_pad: str = "counted") -> None:
        super().__init__()
        self.windows = tuple(windows)
        self.count_pad = local_pad == "counted"
        if embed_dim is None:
            self.projection = None
        else:
            part = embed_dim // (len(channels) * len(self.windows))
            blocks = [channel_pooling(c, part) for _ in self.windows for c in channels]
            self.register_buffer("projection", torch.block_diag(*blocks)[:, :, None, None], persistent=False)

    def forward(self, fine: torch.Tensor, *coarser: torch.Tensor) -> torch.Tensor:
        parts = []
        for w in self.windows:
            for i, tap in enumerate((fine, *coarser)):
                if w > 1:
                    tap = F.avg_pool2d(tap, w, 1, w // 2, count_include_pad=self.count_pad)
                parts.append(tap if i == 0 else
                             F.interpolate(tap, size=fine.shape[-2:], mode="bilinear", align_corners=False))
        features = torch.cat(parts, 1)
        return features if self.projection is None else F.conv2d(features, self.projection)


def memory_bytes(rows: int, dim: int, neighbours: int) -> int:
    """Bytes of a ``NearestBank`` of ``rows`` x ``dim`` with ``neighbours`` per row: the float32 bank and its
    squared norms, the int64 neighbour table and the int64 column table of the two-level search (``search_group``;
    the short last group padded)."""
    group = search_group(rows)
    return rows * (dim * 4 + 4 + neighbours * 8) + -(-rows // group) * group * 8


def search_group(rows: int) -> int:
    """Columns per group of the bank search's two-level minimum: the divisor of ``rows`` nearest sqrt(rows) within
    a factor 2 of it (the distance matrix then reshapes in place), else round(sqrt(rows)) with a shorter last group."""
    root = rows ** 0.5
    divisors = [d for d in range(max(1, int(root / 2)), int(2 * root) + 1) if rows % d == 0 and root / 2 <= d <= 2 * root]
    return min(divisors, key=lambda d: abs(d - root)) if divisors else max(1, round(root))


class NearestBank(nn.Module):
    """Nearest-neighbour search against the memory bank.

    Buffers: ``bank_t`` (D, M) float32, the bank stored transposed so that the search is one MatMul with
    an initializer and the graph holds the bank once; ``bank_sq`` (M,) its squared norms; ``neighbours``
    (M, k) int64, each row's k nearest bank rows, itself first. forward(patches (B, P, D) float32) ->
    (distance (B, P) float32 Euclidean to the nearest row, index (B, P) int64 of that row).
    """

    def __init__(self, bank: torch.Tensor, neighbours: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bank_t", bank.float().t().contiguous())
        self.register_buffer("bank_sq", (self.bank_t * self.bank_t).sum(0))
        self.register_buffer("neighbours", neighbours.long().contiguous())
        # the two-level minimum (``nearest``): groups of about sqrt(M) columns, the last one shorter when M does
        # not divide; ``group_columns`` (groups, group) int64 lists each group's columns, the short last group
        # padded with its last column (which changes neither the minimum nor its first column)
        m = self.rows
        self.group = search_group(m)
        self.full_groups, self.groups = m // self.group, -(-m // self.group)
        columns = torch.arange(self.groups * self.group).reshape(self.groups, self.group).clamp(max=m - 1)
        self.register_buffer("group_columns", columns, persistent=False)

    @property
    def rows(self) -> int:
        return self.bank_t.shape[1]

    def bank(self) -> torch.Tensor:
        """(M, D) float32: the bank rows."""
        return self.bank_t.t()

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, p, d = patches.shape
        flat = patches.reshape(b * p, d)
        # ||a||^2 is the same for every row of one patch, so the search leaves it out and adds it to the minimum
        excess, index = self.nearest(torch.matmul(flat, self.bank_t) * -2.0 + self.bank_sq)
        d2 = excess + (flat * flat).sum(-1)
        return torch.sqrt(torch.clamp(d2, min=0.0)).reshape(b, p), index.reshape(b, p)

    def nearest(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row minimum and its column (the first among equals) of e (N, M) float32 -> ((N,) float32, (N,) int64).

        In two levels of about sqrt(M) each: the minimum of every group of ``group`` columns (one ReduceMin
        over the whole matrix, the last group shorter when M does not divide), the group holding the row's
        minimum (ArgMin over M / group), then the column inside it (GatherElements, ArgMin over group).
        ArgMin and TopK over all M columns were the slowest nodes of the CPU graph (issue #29); every op
        here is static-shaped in M, so the graph keeps one dynamic batch and no Loop.
        """
        g, full = self.group, self.full_groups
        if full == self.groups:  # M divides: no Slice, which would copy the whole matrix
            minima = e.reshape(-1, full, g).amin(-1)  # (N, full)
        else:
            minima = e[:, :full * g].reshape(-1, full, g).amin(-1)
            minima = torch.cat([minima, e[:, full * g:].amin(-1, keepdim=True)], -1)
        columns = self.group_columns[minima.argmin(-1)]  # (N, group): the columns of the row's winning group
        value, k = torch.gather(e, 1, columns).min(-1, keepdim=True)
        return value[:, 0], torch.gather(columns, 1, k)[:, 0]

    @property
    def can_reweight(self) -> bool:
        """Whether the neighbour table has a neighbour beside each row itself: with one column (neighbours 1, or a
        bank of one row) the paper's weight 1 - softmax([d])[0] is 0 for every image."""
        return self.neighbours.shape[1] >= 2

    def reweight(self, patch: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The paper's weight (B,) for one test patch per image: patch (B, D), index (B,) of its nearest row.
        Only with ``can_reweight`` (one column gives 0)."""
        rows = self.bank_t[:, self.neighbours[index]].permute(1, 2, 0)  # (B, k, D): m* and its nearest bank rows
        distance = torch.sqrt(torch.clamp(((rows - patch.unsqueeze(1)) ** 2).sum(-1), min=0.0))
        return 1.0 - torch.softmax(distance, dim=-1)[:, 0]


class PatchcoreDetector(nn.Module):
    """forward(colour (B, 3, S, S) float32 RGB in [0, 1]) -> (anomaly_map (B, 1, S, S), score (B,)) float32.

    A fresh module holds a random bank of ``bank_max`` rows (so a random-weight bench bundle has the
    largest graph the settings allow); ``set_bank`` installs the fitted one. ``net_dtype`` float16 makes
    the FP16 graph: the backbone in float16; features, bank, distances and the map stay float32.
    """

    def __init__(self, settings: PatchcoreSettings, image_size: int) -> None:
        super().__init__()
        spec = BACKBONES[settings.backbone]
        self.settings, self.size = settings, image_size
        mean, std = settings.input_stats
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.backbone = spec.build().eval().requires_grad_(False)
        taps = settings.taps
        self.patches = PatchFeatures(tuple(spec.channels[t] for t in taps),
                                     settings.embed_dim if settings.channel_reduction == "grouped" else None,
                                     settings.local_windows, settings.local_pad)
        if settings.position_weight > 0:
            grid = image_size // (4 * 2 ** taps[0])  # the finest tap's grid (strides 4, 8, 16; S divides by 16)
            axis = torch.linspace(0.0, settings.position_weight, grid)
            y, x = torch.meshgrid(axis, axis, indexing="ij")
            self.register_buffer("position", torch.stack([x, y])[None], persistent=False)  # (1, 2, h, h)
        else:
            self.position = None
        bank = torch.randn(settings.bank_max, settings.feature_dim)
        self.memory = NearestBank(bank, torch.zeros(settings.bank_max, min(settings.neighbours, settings.bank_max),
                                                    dtype=torch.int64))
        self.blur = GaussianBlur(settings.smooth_sigma)
        self.net_dtype = torch.float32

    def train(self, mode: bool = True) -> "PatchcoreDetector":
        super().train(mode)
        self.backbone.eval()  # frozen: batch-norm statistics stay ImageNet's
        return self

    def set_bank(self, bank: torch.Tensor, neighbours: torch.Tensor) -> None:
        """Install the memory bank (M, D) float32 and its neighbour table (M, k) int64, on this module's device."""
        if bank.ndim != 2 or bank.shape[1] != self.settings.feature_dim or neighbours.shape[0] != bank.shape[0]:
            raise ConfigError(f"a memory bank must be (rows, {self.settings.feature_dim}) with one neighbour row per bank "
                              f"row; found bank {tuple(bank.shape)}, neighbours {tuple(neighbours.shape)}.")
        self.memory = NearestBank(bank, neighbours).to(self.pixel_mean.device)

    def patch_features(self, colour: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) RGB [0, 1] -> (B, D, h, h) float32 patch features, h = S / the finest tap's stride,
        D = settings.feature_dim (then the three chromaticity channels and the two position channels, when on)."""
        x = (colour - self.pixel_mean) / self.pixel_std
        if x.dtype != self.net_dtype:
            x = x.to(self.net_dtype)
        maps = self.backbone(x)
        taps = (maps[i] if maps[i].dtype == torch.float32 else maps[i].float() for i in self.settings.taps)
        features = [self.patches(*taps)]
        if self.settings.colour_weight > 0:
            features.append(self.chromaticity(colour.float(), features[0].shape[-1]))
        if self.position is not None:
            features.append(self.position.expand(colour.shape[0], -1, -1, -1))
        return features[0] if len(features) == 1 else torch.cat(features, 1)

    def chromaticity(self, colour: torch.Tensor, grid: int) -> torch.Tensor:
        """(B, 3, S, S) RGB [0, 1] -> (B, 3, grid, grid): each pixel minus its grey mean, averaged over the grid's
        cells (S / grid px) and then a 3 x 3 window of cells (zero padding counted, as the taps' average), times
        ``colour_weight``."""
        chroma = colour - colour.mean(1, keepdim=True)
        cell = self.size // int(grid)  # a traced tensor under the ONNX exporter: torch < 2.10's pools take ints only
        chroma = F.avg_pool2d(F.avg_pool2d(chroma, cell, cell), 3, 1, 1, count_include_pad=True)
        return chroma * self.settings.colour_weight

    def shift_offsets(self) -> list[tuple[int, int]]:
        """(dy, dx) pixels of the views ``score_shifts`` scores, the unshifted one first."""
        n = self.settings.score_shifts
        step = 4 * 2 ** self.settings.taps[0] // n
        return [(dy * step, dx * step) for dy in range(n) for dx in range(n)]

    def forward(self, colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s = colour.shape[0], self.size
        offsets = self.shift_offsets()
        if len(offsets) > 1:  # view (dy, dx) shows image pixel (y + dy, x + dx) at (y, x); the edge repeated
            reach = max(dy for dy, _ in offsets)
            padded = F.pad(colour, (0, reach, 0, reach), mode="replicate")
            colour = torch.cat([padded[:, :, dy : dy + s, dx : dx + s] for dy, dx in offsets])
        f = self.patch_features(colour)
        _, d, h, w = f.shape
        patches = f.flatten(2).transpose(1, 2)  # (V x B, P, D), the unshifted view's B first
        distance, index = self.memory(patches)
        views = F.interpolate(distance.reshape(-1, 1, h, w), size=(s, s), mode="bilinear", align_corners=False)
        if len(offsets) > 1:  # each view's map moved back onto the image (its uncovered edge repeated), then the mean
            views = views.reshape(len(offsets), b, 1, s, s)
            views = torch.stack([F.pad(views[i], (dx, 0, dy, 0), mode="replicate")[:, :, :s, :s]
                                 for i, (dy, dx) in enumerate(offsets)]).mean(0)
            # the unshifted view's rows as (V, B, ...)[0], not [:B]: OpenVINO 2026.4 dropped that Slice of the index
            # table and its GatherElements then refused the (V x B, P) table, so no frame scored
            patches, distance, index = (t.unflatten(0, (len(offsets), -1))[0] for t in (patches, distance, index))
        amap = self.blur(views)
        k = min(self.settings.score_top_k, self.size * self.size)
        score = amap.flatten(1).amax(1) if k == 1 else torch.topk(amap.flatten(1), k, dim=1).values.mean(1)
        if self.settings.reweight and self.memory.can_reweight:
            worst = torch.topk(distance, 1, dim=1).indices  # (B, 1): the most anomalous patch
            patch = torch.gather(patches, 1, worst.unsqueeze(-1).expand(b, 1, d))[:, 0]
            score = score * self.memory.reweight(patch, torch.gather(index, 1, worst)[:, 0])
        return amap, score
