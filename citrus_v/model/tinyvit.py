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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


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


class _ConvStage(nn.Module):
    def __init__(self, dim: int, depth: int, expand_ratio: int, downsample: _PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


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
        bias = self.attention_biases[:, self.bias_index]  # (heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # (b, heads, n, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        windows = self.attn(windows)  # (n*k*k, w*w, C)
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
        x = self.patch_embed(images)  # (n, C0, S, S)
        for stage in self.layers:
            x = stage(x)  # stage 0 maps (n, C0, S, S) -> tokens; later stages stay tokens (n, H*W, C)
        n, _, c = x.shape
        out = self.config.out_side
        x = x.transpose(1, 2).reshape(n, c, out, out)  # (n, C_last, S', S')
        return self.neck(x)
