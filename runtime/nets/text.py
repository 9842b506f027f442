"""Word-level tokenizer and a small transformer text encoder for the built-in "shapes" model.

The shapes captions use a closed vocabulary (`dlab.runtime.shapes.VOCAB`), so a word-level tokenizer is
exact: every known word is one token, anything else is `<unk>` and reported back so the caller can warn
("'purple' is not a word this model knows").

The empty prompt is the unconditional branch of classifier-free guidance. It tokenizes to all `<pad>`,
which would leave attention with no key to look at (softmax over nothing = NaN). Instead of special
cases, the encoder always prepends one learned `<null>` vector at position 0 that is never masked, like
CLIP's BOS token: every sequence has at least one valid key, the empty prompt's context is exactly that
learned vector, and the U-Net's cross-attention can use the same mask without a fallback path.
The encoder's output is therefore one longer than the tokenizer's (L + 1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

PAD, UNK = "<pad>", "<unk>"
MAX_LEN = 12
_WORD = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    """Lowercase, drop punctuation, split on anything that is not a letter or digit."""
    return _WORD.findall(text.lower())


class Encoded(NamedTuple):
    ids: torch.Tensor  # (B, L) int64
    mask: torch.Tensor  # (B, L) bool, True where a real token (known or <unk>) sits
    unknown: tuple[tuple[str, ...], ...]  # per text, the words mapped to <unk>


class Tokenizer:
    """Word-level tokenizer over a fixed vocabulary: index 0 is `<pad>`, index 1 is `<unk>`."""

    def __init__(self, vocab: Sequence[str], max_len: int = MAX_LEN):
        vocab = list(vocab)
        if vocab[:2] != [PAD, UNK]:
            raise ValueError("a tokenizer vocabulary starts with <pad>, <unk>")
        if len(set(vocab)) != len(vocab):
            raise ValueError("duplicate words in the tokenizer vocabulary")
        self.vocab = vocab
        self.max_len = max_len
        self._index = {w: i for i, w in enumerate(vocab)}

    @classmethod
    def from_words(cls, words: Iterable[str], max_len: int = MAX_LEN) -> Tokenizer:
        return cls([PAD, UNK, *words], max_len=max_len)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Texts -> ids and mask of shape (B, max_len); words past max_len are dropped."""
        ids = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        unknown = []
        for row, text in enumerate(texts):
            words = split_words(text)[: self.max_len]
            unknown.append(tuple(w for w in words if w not in self._index))
            ids[row, : len(words)] = torch.tensor(
                [self._index.get(w, 1) for w in words], dtype=torch.long
            )
        return Encoded(ids, ids != 0, tuple(unknown))

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [" ".join(self.vocab[i] for i in row.tolist() if i != 0) for row in ids]

    def to_list(self) -> list[str]:
        """The vocabulary as stored in a model's JSON config."""
        return list(self.vocab)

    @classmethod
    def from_list(cls, vocab: Sequence[str], max_len: int = MAX_LEN) -> Tokenizer:
        return cls(vocab, max_len=max_len)


class TextEncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int
    max_len: int = MAX_LEN
    dim: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict) -> TextEncoderConfig:
        return cls.model_validate(d)


class _Block(nn.Module):
    """Pre-LN transformer layer: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_ratio * dim, dim),
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_mask[:, None, None, :]
        )
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Token + learned position embedding, a small pre-LN transformer, a final LayerNorm.

    `forward(ids, mask)` returns `(context, context_mask)` of shapes (B, L+1, D) and (B, L+1): position
    0 is the learned `<null>` vector (see the module docstring), always valid.
    """

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        c = self.config = config
        if c.dim % c.heads:
            raise ValueError("text encoder dim must be divisible by heads")
        self.token = nn.Embedding(c.vocab_size, c.dim)
        self.null = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.position = nn.Parameter(torch.zeros(1, c.max_len + 1, c.dim))
        self.blocks = nn.ModuleList(_Block(c.dim, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.dim)
        # Words start as N(0, 1) vectors (nn.Embedding's default), as large as the residual stream, so
        # "red" and "green" are near-orthogonal from step 0. With GPT-style std 0.02 they start as a
        # small perturbation of the position vectors; the weak colour gradient never pulled them apart:
        # after 700 steps the context of "a large red square …" and "… green square …" differed by 1.0
        # in norm 10.6 at the colour's slot and the U-Net's output did not change with the colour at all.
        nn.init.normal_(self.token.weight, std=1.0)
        nn.init.normal_(self.null, std=0.02)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = ids.shape
        x = torch.cat([self.null.expand(b, -1, -1), self.token(ids)], dim=1) + self.position[:, : n + 1]
        mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x), mask
