"""TinyViT-5M, the image encoder of LiteMedSAM, written for this project.

The geometry follows the ``lite_medsam.pth`` checkpoint (see ``TinyViTConfig``): a 1x1
conv stem at full input resolution, one MBConv stage, three windowed-attention stages with
learned relative-position biases and a depthwise "local" conv, patch merging between stages,
and a SAM-style neck to 256 channels. For a 256 x 256 input the output is (n, 256, 64, 64):
the SAM-1 mask decoder's image embedding.

Parameter names mirror the checkpoint's own hierarchy (``patch_embed.seq.0.c``,
``layers.1.blocks.0.attn.qkv``...) so the weights load by name without a rename table.

BatchNorm always normalises with its running statistics, in training too (``_ConvBN``):
our batches hold one to four images, whose batch statistics would be noise, and the
pretrained statistics describe the medical images LiteMedSAM was trained on. The affine
weight and bias still train. Because the statistics never update, the checkpoint's
``num_batches_tracked`` counters have no home here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TinyViTConfig:
    """LiteMedSAM's TinyViT. Stage 0 is convolutional (its ``num_heads``/``window_sizes`` entries unused)."""

    image_size: int = 256
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    # stride of the patch merging after stages 0, 1, 2: the checkpoint keeps 64x64 for the last stage
    merge_strides: tuple[int, ...] = (2, 2, 1)
    mlp_ratio: int = 4
    mbconv_expand_ratio: int = 4
    local_conv_size: int = 3
    out_dim: int = 256

    def __post_init__(self) -> None:
        n = len(self.embed_dims)
        for name in ("depths", "num_heads", "window_sizes"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"TinyViTConfig.{name}: needs {n} entries (one per stage), got {getattr(self, name)}")
        if len(self.merge_strides) != n - 1:
            raise ValueError(f"TinyViTConfig.merge_strides: needs {n - 1} entries, got {self.merge_strides}")
        for i in range(1, n):
            if self.embed_dims[i] % self.num_heads[i]:
                raise ValueError(
                    f"TinyViTConfig.embed_dims[{i}]={self.embed_dims[i]} not divisible by num_heads[{i}]={self.num_heads[i]}"
                )

    def resolution(self, stage: int) -> int:
        """Side of the feature map inside ``stage`` (the stem keeps the input side)."""
        side = self.image_size
        for s in self.merge_strides[:stage]:
            side //= s
        return side

    @property
    def out_side(self) -> int:
        return self.resolution(len(self.embed_dims) - 1)


class _ConvBN(nn.Module):
    """Conv2d without bias followed by a BatchNorm that always uses its running statistics."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = _FrozenStatsBatchNorm(c_out)

    def forward(self, x: torch.Tensor, padding: tuple[int, int] | None = None) -> torch.Tensor:
        """``padding`` (rows, cols), inference only: a strip of rows pads its own rows (``_conv_rows``)."""
        if torch.is_grad_enabled():
            return self.bn(self.c(x))
        # inference: the BatchNorm is a fixed per-channel affine map, folded into the conv (one pass
        # over the feature map instead of two; the same values up to rounding)
        weight, bias = self.folded()
        if self.c.kernel_size == (1, 1) and self.c.groups == 1 and self.c.stride == (1, 1):
            # a pointwise conv is a matmul over channels; on a channels-last map the (n, H, W, C)
            # view is free, and the matmul beats the conv kernel (which adds the bias in a second pass)
            out = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)  # (n, H, W, C_out)
            return out.permute(0, 3, 1, 2)  # (n, C_out, H, W), channels-last in memory
        return F.conv2d(x, weight, bias, self.c.stride, padding or self.c.padding, groups=self.c.groups)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv weight and bias with the BatchNorm folded in (weight in channels-last layout:
        the depthwise kernels run about twice as fast on channels-last maps with it)."""
        bn = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
        weight = self.c.weight * scale[:, None, None, None]  # (C_out, C_in / groups, k, k)
        return weight.contiguous(memory_format=torch.channels_last), bn.bias - bn.running_mean * scale


class _FrozenStatsBatchNorm(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class _LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (n, C, H, W) map (SAM's neck norm, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class _PatchEmbed(nn.Module):
    """Stem: two pointwise conv+BN with a GELU between (the checkpoint's stem has stride 1)."""

    def __init__(self, c_in: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(_ConvBN(c_in, dim // 2), nn.GELU(), _ConvBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


# ---------------------------------------------------------------------- inference in strips of rows
# Stage 0 runs at the full input resolution: its 256-channel maps are 64 MiB each at 256 x 256,
# and every such fresh allocation costs page faults (about as much as the convs themselves on a
# CPU). Inference therefore runs stage 0 on horizontal strips of rows whose maps stay small; the
# 3 x 3 convs see the real neighbouring rows (each strip carries a halo of rows recomputed), so
# the result equals the whole-map forward up to rounding (tested).
_STRIP_ROWS = 16  # output rows of stage 0 per strip
# The attention stages' large intermediates (q/k/v of every window, the MLP's hidden layer) are
# made chunk by chunk for the same reason.
_CHUNK_VALUES = 1 << 20


@dataclass
class _Strip:
    """Rows [top, top + h) of an (n, C, rows, W) map of ``rows`` rows."""

    x: torch.Tensor  # (n, C, h, W)
    top: int
    rows: int


def _conv_rows(conv: _ConvBN, s: _Strip) -> _Strip:
    """A k x k conv (padding k // 2, stride 1 or 2) on a strip: zero rows only at the map's own
    top and bottom; the output keeps the rows whose whole window lies in the strip."""
    k, stride = conv.c.kernel_size[0], conv.c.stride[0]
    p = k // 2
    pad_top = p if s.top == 0 else 0
    pad_bottom = p if s.top + s.x.shape[2] == s.rows else 0
    x = F.pad(s.x, (0, 0, pad_top, pad_bottom))
    start = s.top - pad_top  # map row of x's first row
    first = -(-(start + p) // stride)  # the first output row whose window starts inside x
    y = conv(x[:, :, first * stride - p - start :], padding=(0, conv.c.padding[1]))
    return _Strip(y, first, -(-s.rows // stride))


def _chunked(fn, x: torch.Tensor, per_item: int, out_dim: int) -> torch.Tensor:
    """fn over chunks of x's first dim, each chunk's widest intermediate (``per_item`` values per
    item) kept near 4 MiB (inference; fn must treat the items independently)."""
    step = max(1, _CHUNK_VALUES // per_item)
    if torch.is_grad_enabled() or x.shape[0] <= step:
        return fn(x)
    out = x.new_empty(*x.shape[:-1], out_dim)
    for i in range(0, x.shape[0], step):
        out[i : i + step] = fn(x[i : i + step])
    return out


def _gelu(s: _Strip) -> _Strip:
    return _Strip(F.gelu(s.x), s.top, s.rows)


class _MBConv(nn.Module):
    """Inverted residual: expand 1x1, depthwise 3x3, project 1x1, add, GELU."""

    def __init__(self, dim: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = dim * expand_ratio
        self.conv1 = _ConvBN(dim, hidden)
        self.conv2 = _ConvBN(hidden, hidden, kernel=3, groups=hidden)
        self.conv3 = _ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(x + self.conv3(y))

    def forward_strip(self, s: _Strip) -> _Strip:
        """``forward`` on a strip of rows (inference): one row fewer on each inner edge."""
        y = _gelu(_conv_rows(self.conv2, _Strip(F.gelu(self.conv1(s.x)), s.top, s.rows)))
        skip = y.top - s.top
        x = s.x[:, :, skip : skip + y.x.shape[2]]
        return _Strip(F.gelu(x + self.conv3(y.x)), y.top, y.rows)


class _PatchMerging(nn.Module):
    """(n, C, H, W) or tokens (n, H*W, C) -> tokens (n, H'*W', C') with H' = H / stride."""

    def __init__(self, dim: int, out_dim: int, side: int, stride: int) -> None:
        super().__init__()
        self.side = side
        self.conv1 = _ConvBN(dim, out_dim)
        self.conv2 = _ConvBN(out_dim, out_dim, kernel=3, stride=stride, groups=out_dim)
        self.conv3 = _ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            n, _, c = x.shape
            x = x.transpose(1, 2).reshape(n, c, self.side, self.side)  # (n, C, H, W)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)  # (n, H'*W', C')

    def forward_strip(self, s: _Strip) -> _Strip:
        """``forward`` on a strip of rows of a (n, C, H, W) map, kept as a map (inference)."""
        y = _gelu(_conv_rows(self.conv2, _Strip(F.gelu(self.conv1(s.x)), s.top, s.rows)))
        return _Strip(self.conv3(y.x), y.top, y.rows)


class _ConvStage(nn.Module):
    def __init__(self, dim: int, depth: int, expand_ratio: int, downsample: _PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and self.downsample is not None:
            return self._forward_in_strips(x)
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x

    def _forward_in_strips(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) -> tokens (n, H'*W', C'), strip by strip (see ``_STRIP_ROWS``)."""
        assert self.downsample is not None
        rows, stride = x.shape[2], self.downsample.conv2.c.stride[0]
        halo = len(self.blocks) + 1  # one row per 3 x 3 conv on each side
        out_rows = -(-rows // stride)
        parts = []
        for r0 in range(0, out_rows, _STRIP_ROWS):
            r1 = min(r0 + _STRIP_ROWS, out_rows)
            lo, hi = max(0, r0 * stride - halo), min(rows, (r1 - 1) * stride + 1 + halo)
            s = _Strip(x[:, :, lo:hi], lo, rows)
            for block in self.blocks:
                s = block.forward_strip(s)
            s = self.downsample.forward_strip(s)
            parts.append(s.x[:, :, r0 - s.top : r1 - s.top])  # (n, C', r1 - r0, W')
        return torch.cat(parts, dim=2).flatten(2).transpose(1, 2)  # (n, H'*W', C')


class _WindowAttention(nn.Module):
    """Multi-head attention inside one w x w window, with a learned bias per head and |offset|.

    Pre-norm lives here (as in the checkpoint), so zero-padded window positions are normalised
    too and take part as keys; the caller crops them away afterwards.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # one bias per head for each (|dy|, |dx|) between two window positions, stored at |dy|*w + |dx|
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()  # (w*w,) row-major window positions
        index = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()  # (w*w, w*w)
        self.register_buffer("bias_index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (n_windows, w*w, C) -> (n_windows, w*w, C)."""
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)  # per head: [q | k | v]
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=-1)  # each (b, heads, n, head_dim)
        bias = self.attention_biases[:, self.bias_index][None]  # (1, heads, n, n)
        # a 4-D mask lets CPU inference take the fused (flash) kernel; a 3-D one falls back to
        # the unfused math path, 2-4x slower here (same values up to rounding)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # (b, heads, n, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C), token by token."""
        rows = x.reshape(-1, x.shape[-1])  # (tokens, C)
        out = _chunked(self._mlp, rows, self.fc1.out_features, self.fc2.out_features)
        return out.view(x.shape)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class _TinyViTBlock(nn.Module):
    """Windowed attention (residual), depthwise local conv, MLP (residual); tokens (n, H*W, C)."""

    def __init__(self, dim: int, side: int, num_heads: int, window: int, mlp_ratio: int, local_conv: int) -> None:
        super().__init__()
        self.side, self.window = side, window
        self.attn = _WindowAttention(dim, num_heads, window)
        self.local_conv = _ConvBN(dim, dim, kernel=local_conv, groups=dim)
        self.mlp = _Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, c = x.shape
        s, w = self.side, self.window
        pad = (w - s % w) % w
        grid = F.pad(x.view(n, s, s, c), (0, 0, 0, pad, 0, pad))  # (n, S+pad, S+pad, C), zeros bottom/right
        k = (s + pad) // w
        windows = grid.view(n, k, w, k, w, c).transpose(2, 3).reshape(n * k * k, w * w, c)
        windows = _chunked(self.attn, windows, 3 * w * w * c, c)  # (n*k*k, w*w, C), a few windows at a time
        grid = windows.view(n, k, k, w, w, c).transpose(2, 3).reshape(n, k * w, k * w, c)
        x = x + grid[:, :s, :s].reshape(n, length, c)
        x = self.local_conv(x.transpose(1, 2).reshape(n, c, s, s)).flatten(2).transpose(1, 2)  # (n, S*S, C)
        return x + self.mlp(x)


class _AttentionStage(nn.Module):
    def __init__(self, blocks: list[_TinyViTBlock], downsample: _PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """(n, 3, S, S) images -> (n, out_dim, S', S') image embeddings (S' = 64 for S = 256)."""

    def __init__(self, config: TinyViTConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or TinyViTConfig()
        dims = cfg.embed_dims
        self.patch_embed = _PatchEmbed(3, dims[0])
        stages: list[nn.Module] = []
        for i, dim in enumerate(dims):
            side = cfg.resolution(i)
            last = i == len(dims) - 1
            merge = None if last else _PatchMerging(dim, dims[i + 1], side, cfg.merge_strides[i])
            if i == 0:
                stages.append(_ConvStage(dim, cfg.depths[0], cfg.mbconv_expand_ratio, merge))
            else:
                blocks = [
                    _TinyViTBlock(dim, side, cfg.num_heads[i], cfg.window_sizes[i], cfg.mlp_ratio, cfg.local_conv_size)
                    for _ in range(cfg.depths[i])
                ]
                stages.append(_AttentionStage(blocks, merge))
        self.layers = nn.ModuleList(stages)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_dim, kernel_size=1, bias=False),
            _LayerNorm2d(cfg.out_dim),
            nn.Conv2d(cfg.out_dim, cfg.out_dim, kernel_size=3, padding=1, bias=False),
            _LayerNorm2d(cfg.out_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        side = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, side, side):
            raise ValueError(f"TinyViT input must be (n, 3, {side}, {side}), got {tuple(images.shape)}")
        if not torch.is_grad_enabled():  # channels-last convs are faster on CPU; the tokens come out contiguous
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.patch_embed(images)  # (n, C0, S, S)
        for stage in self.layers:
            x = stage(x)  # stage 0 maps (n, C0, S, S) -> tokens; later stages stay tokens (n, H*W, C)
        n, _, c = x.shape
        out = self.config.out_side
        x = x.transpose(1, 2).reshape(n, c, out, out)  # (n, C_last, S', S')
        return self.neck(x)
