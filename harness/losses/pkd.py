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

    L_PT = mean over examples, mapped layers (m, n) and hidden dimensions of
    (h_s[m, CLS] / ||h_s[m, CLS]||_2 - h_t[n, CLS] / ||h_t[n, CLS]||_2)^2,
    the squared distance of eq. 6 at the scale of the authors' code (a mean squared error), which is
    the scale the paper's beta in {10, 100, 500, 1000} is tuned for.  PKD-skip (layer_map: skip) maps
    student block i to teacher block 2i+1 for a half-depth student, PKD-last (layer_map: last) to the
    blocks just below the top.  The top layer is left to the KD term (use it with hinton_kd, beta as
    the weight).  With a narrower student the [CLS] state is projected to the teacher's width first.
    """

    Params = PKDParams
    summary = "BERT-PKD: MSE between L2-normalised [CLS] states of mapped layers (skip / last)"

    def forward(self, batch: Batch) -> torch.Tensor:
        def one(s, t, pairs, proj, w):
            hs = torch.stack([F.normalize(proj(s.hidden[m + 1][:, 0]).float(), dim=-1) for m, _ in pairs])  # [P, B, Ht]
            ht = torch.stack([F.normalize(t.hidden[n + 1][:, 0].float(), dim=-1) for _, n in pairs])  # [P, B, Ht]
            return ((hs - ht).pow(2) * w[None, :, None]).mean()
        return self.per_teacher(batch, one)
