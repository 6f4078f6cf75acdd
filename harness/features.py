"""Intermediate representations of a BERT-like encoder, computed only when an objective term asks.

``forward_features(model, inputs, need)`` runs the model once and returns :class:`Features`:

- logits            [B, C]
- hidden            (L + 1) x [B, T, H]: index 0 is the embedding output, index l the output of block l
                    (1-based; Hugging Face's ``output_hidden_states``), only when ``need.hidden``
- q, k, v           {block (0-based): [B, T, H]}: the query/key/value projections (heads concatenated),
                    captured with forward hooks on the blocks listed in ``need.qkv``
- scores / probs    computed from q and k on demand: QK^T / sqrt(d_head) (+ MPNet's relative position
                    bias), softmax over the unmasked keys.  Pre-dropout, like the model's own.

Hooks read the projections the model computes anyway, so asking for attention costs no second
forward; and nothing is captured when no term asks.  The same code serves BERT and MPNet (whose
attention modules name their projections ``query/key/value`` and ``q/k/v``) and any student built
from either.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

# attribute names of the self-attention projections, per model family
_QKV_NAMES = (("attention.self", ("query", "key", "value")),  # BERT, RoBERTa, ...
              ("attention.attn", ("q", "k", "v")))  # MPNet


@dataclass(frozen=True)
class Need:
    hidden: bool = False  # output_hidden_states (the model returns all of them)
    qkv: frozenset[int] = frozenset()  # 0-based blocks whose projections are captured
    layers: frozenset[int] = frozenset()  # hidden-state indices actually read (what a cache stores)

    def __or__(self, other: "Need") -> "Need":
        return Need(self.hidden or other.hidden, self.qkv | other.qkv, self.layers | other.layers)


@dataclass
class Features:
    logits: torch.Tensor  # [B, C]
    mask: torch.Tensor  # [B, T] 1 = real token
    heads: int
    hidden: tuple[torch.Tensor, ...] | None = None
    q: dict[int, torch.Tensor] = field(default_factory=dict)
    k: dict[int, torch.Tensor] = field(default_factory=dict)
    v: dict[int, torch.Tensor] = field(default_factory=dict)
    position_bias: torch.Tensor | None = None  # [1, heads, T, T] (MPNet) or None

    def split_heads(self, x: torch.Tensor, heads: int | None = None) -> torch.Tensor:
        """[B, T, H] -> [B, heads, T, H / heads]."""
        heads = heads or self.heads
        b, t, h = x.shape
        return x.view(b, t, heads, h // heads).transpose(1, 2)

    def scores(self, block: int) -> torch.Tensor:
        """Unnormalised attention scores of a block: [B, heads, T, T], no mask added."""
        q, k = self.split_heads(self.q[block]), self.split_heads(self.k[block])
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return s + self.position_bias if self.position_bias is not None else s

    def log_probs(self, block: int) -> torch.Tensor:
        """log of the attention distribution over unmasked keys: [B, heads, T, T]."""
        s = self.scores(block).float().masked_fill(~self.mask.bool()[:, None, None, :], float("-inf"))
        return torch.log_softmax(s, dim=-1)


def _qkv_modules(block: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    for path, names in _QKV_NAMES:
        mod = block
        try:
            for part in path.split("."):
                mod = getattr(mod, part)
            return tuple(getattr(mod, n) for n in names)
        except AttributeError:
            continue
    raise TypeError(f"{type(block).__name__}: cannot find its query/key/value projections "
                    f"(looked for {', '.join(p for p, _ in _QKV_NAMES)})")


@contextmanager
def _capture(model: nn.Module, blocks: frozenset[int], out: dict):
    handles = []
    layers = model.base_model.encoder.layer
    for b in blocks:
        for name, mod in zip("qkv", _qkv_modules(layers[b])):
            handles.append(mod.register_forward_hook(
                lambda _m, _i, o, name=name, b=b: out[name].__setitem__(b, o)))
    rel = getattr(model.base_model.encoder, "relative_attention_bias", None)
    if blocks and rel is not None:  # MPNet: [T, T, heads] bucketed relative-position bias, shared by blocks
        handles.append(rel.register_forward_hook(lambda _m, _i, o: out.__setitem__("bias", o)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def forward_features(model: nn.Module, inputs: dict, need: Need) -> Features:
    """Run ``model`` on ``inputs`` (input_ids or inputs_embeds, attention_mask, ...) capturing ``need``."""
    out = {"q": {}, "k": {}, "v": {}, "bias": None}
    with _capture(model, need.qkv, out):
        res = model(**inputs, output_hidden_states=need.hidden or None)
    bias = out["bias"]
    if bias is not None:
        bias = bias.permute(2, 0, 1).unsqueeze(0)  # [1, heads, T, T]
    return Features(logits=res.logits, mask=inputs["attention_mask"], heads=model.config.num_attention_heads,
                    hidden=res.hidden_states if need.hidden else None,
                    q=out["q"], k=out["k"], v=out["v"], position_bias=bias)


def mixed_forward(model: nn.Module, inputs: dict, perm: torch.Tensor, lam: torch.Tensor, need: Need = Need()) -> Features:
    """MixKD's forward on interpolated word embeddings: lam x_i + (1 - lam) x_perm(i), lam [B].

    Each model mixes its *own* word embeddings of the same token ids; positions and token types are
    added by the model as usual (those of example i); the attention mask is the union of the pair's.
    """
    emb = model.get_input_embeddings()(inputs["input_ids"])  # [B, T, H]
    lam = lam.to(emb.dtype)[:, None, None]
    mixed = {"inputs_embeds": lam * emb + (1 - lam) * emb[perm],
             "attention_mask": torch.maximum(inputs["attention_mask"], inputs["attention_mask"][perm])}
    if "token_type_ids" in inputs:
        mixed["token_type_ids"] = inputs["token_type_ids"]
    return forward_features(model, mixed, need)
