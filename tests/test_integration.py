"""Video-enhanced integration (eq. 11-14) and the Table 4 fusions, by hand on tiny tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fian.model.integration import Fusion, LengthProjection, VideoEnhancedIntegration


def test_length_projection_eq_11_by_hand_and_ignores_padded_words():
    proj = LengthProjection(n_q=3, n_v=2)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]]))  # W in R^{n_v x n_q}
        proj.bias.copy_(torch.tensor([0.5, -0.5]))  # one bias per output step (R^{n_v})
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [7.0, 7.0]]])  # [1, L=3, d=2]; the third word is padding
    mask = torch.tensor([[True, True, False]])
    out = proj(q, mask)[0]  # [n_v, d]
    # row t: sum_n W[t, n] q_n + b_t over the two real words
    expect = torch.tensor([[1.0 + 0.5, 2.0 + 0.5], [0.0 - 0.5, -1.0 - 0.5]])
    torch.testing.assert_close(out, expect)
    # fewer columns (a batch with shorter queries): same result, the missing words are padding
    torch.testing.assert_close(proj(q[:, :2], mask[:, :2])[0], expect)


def test_filter_eq_12_14_by_hand():
    torch.manual_seed(0)
    d, n_q, n_v = 2, 2, 3
    vei = VideoEnhancedIntegration(n_branches=2, dim=d, n_q=n_q, n_v=n_v)
    v1, v2 = torch.randn(1, n_v, d), torch.randn(1, n_v, d)
    q1, q2 = torch.randn(1, n_q, d), torch.randn(1, n_q, d)
    mask = torch.ones(1, n_q, dtype=torch.bool)
    with torch.no_grad():
        vei.filter.weight.copy_(torch.eye(2 * d) * 2.0)
        vei.filter.bias.fill_(-1.0)
    out = vei([v1, v2], [q1, q2], mask)[0]

    p1, p2 = vei.length_proj
    qh1 = p1.weight @ q1[0] + p1.bias[:, None]  # eq. 11
    qh2 = p2.weight @ q2[0] + p2.bias[:, None]
    v_hat = torch.cat([v1[0], v2[0]], -1)  # eq. 12
    q_hat = torch.cat([qh1, qh2], -1)
    r = torch.sigmoid(2.0 * q_hat - 1.0)  # eq. 13 with W^r = 2 I, b^r = -1
    expect = F.layer_norm(v_hat + r * q_hat, (2 * d,), vei.norm.weight, vei.norm.bias)  # eq. 14
    torch.testing.assert_close(out, expect)
    assert out.shape == (n_v, 2 * d)


def test_fusions_of_table_4():
    torch.manual_seed(1)
    v1, v2 = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    mask = torch.ones(2, 4, dtype=torch.bool)
    q = torch.randn(2, 4, 3)
    torch.testing.assert_close(Fusion("concat", 2, 3, 4, 5)([v1, v2], [], mask), torch.cat([v1, v2], -1))
    m = Fusion("matrix", 2, 3, 4, 5)([v1, v2], [], mask)
    torch.testing.assert_close(m, torch.cat([v1, v2, v1 - v2, v1 * v2], -1))
    torch.testing.assert_close(Fusion("none", 1, 3, 4, 5)([v2], [], mask), v2)
    one = Fusion("gate", 1, 3, 4, 5)  # VQMA / QVMA: the gate over one branch, width d
    assert one.out_dim == 3 and one([v2], [q], mask).shape == (2, 5, 3)
    with pytest.raises(ValueError, match="both branches"):
        Fusion("concat", 1, 3, 4, 5)
    with pytest.raises(ValueError, match="one branch"):
        Fusion("none", 2, 3, 4, 5)
    with pytest.raises(ValueError, match="unknown fusion"):
        Fusion("sum", 2, 3, 4, 5)
