"""A small text-conditioned U-Net denoiser: it predicts ε or v, whichever the model's schedule says.

Layout follows the ADM / Stable Diffusion U-Net at toy scale: a conv stem, an encoder of residual blocks
with stride-2 downsampling, a bottleneck (res, attention, res), a decoder that concatenates the encoder's
skips and upsamples, and a GroupNorm-SiLU-conv head. The timestep goes through a sinusoidal embedding and
an MLP and is added inside every residual block, together with a projection of the pooled prompt. At
the resolutions named in `attention_resolutions` a transformer block does self-attention over the
pixels, cross-attention to the text encoder's output (padding masked) and a small MLP. The output conv starts at zero, so an untrained net predicts 0
and the first steps only learn, never fight a random output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn


class UNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    # Pixels folded into channels before the first conv (pixel-unshuffle, as a ViT/DiT patch): with 2,
    # a 32×32×3 image enters as 16×16×12 and the net never runs at full resolution, which halves
    # the training step on a 2-core CPU. Attention resolutions are the folded feature-map sizes.
    patch_size: int = 2
    # 32 for the shipped "shapes": in a fixed ~40-minute CPU budget a narrower net sees more images, and
    # its conditional sizes came out sharper. Same recipe otherwise (batch 32, aux layout loss 0.02), DDIM-50
    # through ONNX Runtime, guidance 3 on t < 700, size prompts × 4 seeds (/tmp/exp2/p.py, 2026-11-26):
    #   base 64, 5.60 M parameters, 3,100 steps (40.6 min): size prompts 90.3 % (every step 76.4 %)
    #   base 48, 3.27 M parameters, 4,300 steps (35.7 min): 93.8 % (every step 81.9 %)
    #   base 32, 1.57 M parameters, 7,000 steps (42.4 min): 95.8 % (every step 90.3 %), scb prompts 100 %
    # Over the model card's 20 seeds, size prompts: base 32 93.5 %, base 64 88.2 % (target 95 %);
    # shape×colour×background 99.4 % and 99.7 %. The shipped base-32 model is now trained at batch 24 for
    # 8,500 steps: size prompts 95.1 %, shape×colour×background 98.9 % (see TrainConfig.batch_size).
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (8, 4)  # feature-map sizes that get self+cross attention
    heads: int = 4
    context_dim: int = 128
    time_embed_dim: int = 128
    groups: int = 16
    dropout: float = 0.0
    # Add a projection of the text encoder's pooled output (its position-0 `<null>` slot, which attends
    # to every token) to the time embedding, as Imagen and SDXL do. Every residual block then gets a
    # per-channel shift from the prompt: the global decisions (background, fill colour) that a
    # 32×32 sample makes in its first, noisiest steps no longer depend on cross-attention alone.
    pooled_text: bool = True
    # ADM's `use_scale_shift_norm` (Dhariwal & Nichol 2021, sec. 3): the time+prompt embedding gives each
    # residual block a per-channel scale and shift after its second GroupNorm, h·(1 + s) + b, instead of
    # an added bias. The product lets the prompt gate features by where the shape is, which an added
    # bias cannot do without help from the following nonlinearity.
    scale_shift: bool = True

    @model_validator(mode="after")
    def _check(self) -> UNetConfig:
        for m in self.channel_mult:
            if (self.base_channels * m) % self.groups or (self.base_channels * m) % self.heads:
                raise ValueError("every level's channels must be divisible by groups and heads")
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be divisible by patch_size")
        if (self.image_size // self.patch_size) % 2 ** (len(self.channel_mult) - 1):
            raise ValueError("image_size / patch_size must be divisible by 2 per downsampling level")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        return cls.model_validate(d)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, (B,) -> (B, dim) (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int, dropout: float, scale_shift: bool = False):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, 2 * cout if scale_shift else cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        emb = self.temb(temb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + emb)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Multi-head attention; `context=None` is self-attention. `key_mask` (B, S) is True for valid keys."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, context=None, key_mask=None):
        b, n, d = x.shape
        ctx = x if context is None else context
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(a.transpose(1, 2).reshape(b, n, d))


class AttentionBlock(nn.Module):
    """Transformer over the pixels of a feature map: self-attention, cross-attention to text, MLP."""

    def __init__(self, ch: int, context_dim: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.proj_in = nn.Linear(ch, ch)
        self.norm1 = nn.LayerNorm(ch)
        self.self_attn = _Attention(ch, ch, heads)
        self.norm2 = nn.LayerNorm(ch)
        self.cross_attn = _Attention(ch, context_dim, heads)
        self.norm3 = nn.LayerNorm(ch)
        self.mlp = nn.Sequential(nn.Linear(ch, 2 * ch), nn.GELU(), nn.Linear(2 * ch, ch))
        self.proj_out = nn.Linear(ch, ch)

    def forward(self, x, context, context_mask):
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        t = t + self.self_attn(self.norm1(t))
        t = t + self.cross_attn(self.norm2(t), context, context_mask)
        t = t + self.mlp(self.norm3(t))
        return x + self.proj_out(t).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """2x upsampling by a stride-2, 2x2 transposed conv: no overlap, so no checkerboard, and 9x fewer
    multiply-adds than ADM's nearest + 3x3 conv at the higher resolution (that conv alone was ~15% of a
    training step). The residual blocks that follow, at the new resolution, do the smoothing."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(ch, ch, 2, stride=2)

    def forward(self, x):
        return self.conv(x)


class _Stage(nn.Module):
    """One U-Net step at one resolution: a residual block, then attention if this resolution has it."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x, temb, context, context_mask):
        x = self.res(x, temb)
        return x if self.attn is None else self.attn(x, context, context_mask)


class UNet(nn.Module):
    """`forward(x, t, context, context_mask) -> ε or v`, with x (B, C, H, W), t (B,), context (B, S, D)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        c = self.config = config
        g, temb = c.groups, c.time_embed_dim

        def stage(cin, cout, res):
            attn = AttentionBlock(cout, c.context_dim, c.heads, g) if res in c.attention_resolutions else None
            return _Stage(ResBlock(cin, cout, temb, g, c.dropout, c.scale_shift), attn)

        self.time_mlp = nn.Sequential(
            nn.Linear(c.base_channels, temb), nn.SiLU(), nn.Linear(temb, temb)
        )
        self.text_to_time = nn.Linear(c.context_dim, temb) if c.pooled_text else None
        p2 = c.patch_size**2
        self.conv_in = nn.Conv2d(c.in_channels * p2, c.base_channels, 3, padding=1)

        ch, res = c.base_channels, c.image_size // c.patch_size
        skips = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                self.down.append(stage(ch, c.base_channels * mult, res))
                ch = c.base_channels * mult
                skips.append(ch)
            if level < len(c.channel_mult) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
                res //= 2

        self.mid = _Stage(ResBlock(ch, ch, temb, g, c.dropout, c.scale_shift), AttentionBlock(ch, c.context_dim, c.heads, g))
        self.mid_res = ResBlock(ch, ch, temb, g, c.dropout, c.scale_shift)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for _ in range(c.num_res_blocks + 1):
                self.up.append(stage(ch + skips.pop(), c.base_channels * mult, res))
                ch = c.base_channels * mult
            if level > 0:
                self.up.append(Upsample(ch))
                res *= 2

        self.norm_out = nn.GroupNorm(g, ch)
        self.conv_out = nn.Conv2d(ch, c.out_channels * p2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t, context, context_mask=None):
        temb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.text_to_time is not None:
            temb = temb + self.text_to_time(context[:, 0])
        p = self.config.patch_size
        h = self.conv_in(F.pixel_unshuffle(x, p) if p > 1 else x)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, temb, context, context_mask)
            skips.append(h)
        h = self.mid_res(self.mid(h, temb, context, context_mask), temb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = layer(torch.cat([h, skips.pop()], dim=1), temb, context, context_mask)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, p) if p > 1 else out
