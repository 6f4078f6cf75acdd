"""BERT-PKD: patient knowledge distillation of the [CLS] hidden states of mapped layers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.losses.base import TERMS, LAYER_MAP_HELP, Batch, LayerMap, MappedParams, MappedTerm


class PKDParams(MappedParams):
    layer_map: LayerMap = Field("skip", description=LAYER_MAP_HELP)


@TERMS.register("pkd")
class PatientKD(MappedTerm):
    """Sun et al. (2019), "Patient Knowledge Distillation for BERT Model Compression", eq. 6.

    L_PT = sum_{(m, n) in map} mean_b || h_s[m, b, CLS] / ||.||_2 - h_t[n, b, CLS] / ||.||_2 ||_2^2
    over the [CLS] states of mapped layers; PKD-skip (layer_map: skip) maps student block i to teacher
    block 2i+1 for a half-depth student, PKD-last (layer_map: last) to the blocks just below the top.
    The top layer is left to the KD term (use it with hinton_kd, the paper's beta ~ 100-500 as weight).
    With a narrower student, the [CLS] state is projected to the teacher's width before normalising.
    """

    Params = PKDParams
    summary = "BERT-PKD: MSE between L2-normalised [CLS] states of mapped layers (skip / last)"

    def forward(self, batch: Batch) -> torch.Tensor:
        def one(s, t, pairs, proj):
            loss = 0.0
            for m, n in pairs:
                hs = F.normalize(proj(s.hidden[m + 1][:, 0]).float(), dim=-1)  # [B, Ht]
                ht = F.normalize(t.hidden[n + 1][:, 0].float(), dim=-1)  # [B, Ht]
                loss = loss + (hs - ht).pow(2).sum(-1).mean()
            return loss
        return self.per_teacher(batch, one)
