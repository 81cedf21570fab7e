"""nmt/models/rnn.py: parameter counts from a formula, tying, and the encoder's handling of padding.
(The protocol properties are in test_protocol.py.)"""

from __future__ import annotations

import pytest
import torch

from nmt.config import PAD_ID, ModelConfig, RNNConfig
from nmt.models import build_model, count_parameters
from nmt.models.rnn import RNNModel


def expected_parameters(r: RNNConfig, vs: int, vt: int, tie: bool, shared: bool) -> int:
    """The RNN's parameter count, written out. N hidden, E embedding, A attention size."""
    n, e, a = r.hidden_size, r.emb_dim, r.attn_dim
    gates = 4 if r.cell == "lstm" else 3
    h = n // 2  # each encoder direction

    def rnn_layer(inp: int, hid: int) -> int:  # W_ih, W_hh, b_ih, b_hh
        return gates * (inp * hid + hid * hid + 2 * hid)

    embeddings = vt * e + (0 if tie and shared else vs * e)
    encoder = sum(2 * rnn_layer(e if i == 0 else n, h) for i in range(r.enc_layers))
    bridge = (n * r.dec_layers * n + r.dec_layers * n) * (2 if r.cell == "lstm" else 1)
    attention = {
        "bahdanau": n * a + (n * a + a) + a,  # W, U + b, v
        "luong-dot": 0,
        "luong-general": n * n,  # W_a
        "local": n * n + n * a + a,  # W_a, W_p, v_p
        "local-m": n * n,  # W_a
        "hard": n * a + (n * a + a) + a,  # Bahdanau's scorer: W, U + b, v
    }[r.attention]
    dec_in = e + n if r.input_feeding else e
    decoder = sum(rnn_layer(dec_in if i == 0 else n, n) for i in range(r.dec_layers))
    readout = (2 * n + e) * n + n
    if tie:
        output = n * e if n != e else 0  # projection to E; the output matrix is the embedding
    else:
        output = n * vt
    return embeddings + encoder + bridge + attention + decoder + readout + output


CASES = [
    RNNConfig(emb_dim=8, hidden_size=12, attn_dim=6, enc_layers=2, dec_layers=2),
    RNNConfig(emb_dim=12, hidden_size=12, cell="lstm", attention="local", dec_layers=2),
    RNNConfig(emb_dim=8, hidden_size=10, attention="luong-dot", input_feeding=False),
    RNNConfig(emb_dim=8, hidden_size=10, attention="local-m", input_feeding=False),
    RNNConfig(emb_dim=8, hidden_size=10, attn_dim=6, cell="lstm", attention="hard"),
    RNNConfig(emb_dim=8, hidden_size=10, cell="lstm", attention="luong-general", enc_layers=3),
]


@pytest.mark.parametrize("r", CASES, ids=lambda r: f"{r.cell}-{r.attention}")
@pytest.mark.parametrize("tie,shared", [(True, True), (True, False), (False, True)])
def test_parameter_count_formula(r: RNNConfig, tie: bool, shared: bool) -> None:
    vs, vt = (30, 30) if shared else (30, 25)
    model = build_model(ModelConfig(arch="rnn", tie_embeddings=tie, rnn=r), vs, vt, shared)
    assert count_parameters(model) == expected_parameters(r, vs, vt, tie, shared)


def test_tying() -> None:
    r = RNNConfig(emb_dim=8, hidden_size=12, attn_dim=6)
    model = RNNModel(ModelConfig(arch="rnn", rnn=r), 20, 20, True)
    assert model.src_embed is model.tgt_embed
    assert model.output.weight is model.tgt_embed.weight
    assert isinstance(model.readout_proj, torch.nn.Linear)  # 12 -> 8 before the tied output
    untied_src = RNNModel(ModelConfig(arch="rnn", rnn=r), 20, 18, False)
    assert untied_src.src_embed is not untied_src.tgt_embed
    assert untied_src.output.weight is untied_src.tgt_embed.weight
    with pytest.raises(ValueError):
        RNNModel(ModelConfig(arch="rnn", rnn=r), 20, 18, True)


@torch.no_grad()
def test_encoder_memory_is_zero_on_padding_and_bridge_ignores_it() -> None:
    r = RNNConfig(emb_dim=8, hidden_size=12, attn_dim=6, cell="lstm", enc_layers=2, dropout=0.0)
    model = RNNModel(ModelConfig(arch="rnn", rnn=r), 20, 20, True).eval()
    src = torch.tensor([[5, 6, 7, 8], [9, 10, PAD_ID, PAD_ID]])
    state = model.encode(src, src != PAD_ID)
    assert state.memory.shape == (2, 4, 12)
    assert (state.memory[1, 2:] == 0).all()
    assert state.hidden.shape == (1, 2, 12) and state.cell.shape == (1, 2, 12)
    alone = model.encode(src[1:, :2], src[1:, :2] != PAD_ID)  # the same sentence, no padding
    torch.testing.assert_close(state.memory[1:, :2], alone.memory, atol=1e-6, rtol=0)
    torch.testing.assert_close(state.hidden[:, 1:], alone.hidden, atol=1e-6, rtol=0)
    torch.testing.assert_close(state.cell[:, 1:], alone.cell, atol=1e-6, rtol=0)
