"""nmt/models/transformer.py: parameter counts from a formula, tying, fused vs exact attention at
the model level, the key/value cache, position limits and torch.compile. (The protocol properties
are in test_protocol.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt.config import PAD_ID, ModelConfig, TransformerConfig
from nmt.models import build_model, count_parameters
from nmt.models.transformer import TransformerModel


def expected_parameters(t: TransformerConfig, vs: int, vt: int, tie: bool, shared: bool) -> int:
    """The Transformer's parameter count, written out. D model width, F FFN width."""
    d, f = t.d_model, t.ffn_dim
    linear = d * d + d  # one D x D projection with bias
    layer_norm = 2 * d
    ffn = (d * f + f) + (f * d + d)
    encoder_layer = 4 * linear + ffn + 2 * layer_norm  # Q, K, V, O; FFN; 2 norms
    decoder_layer = 8 * linear + ffn + 3 * layer_norm  # self and cross Q, K, V, O; FFN; 3 norms
    embeddings = vt * d + (0 if tie and shared else vs * d)
    positions = t.max_positions * d if t.positions == "learned" else 0
    final_norms = 2 * layer_norm if t.pre_norm else 0
    output = 0 if tie else d * vt  # no bias
    return (
        embeddings
        + positions
        + t.enc_layers * encoder_layer
        + t.dec_layers * decoder_layer
        + final_norms
        + output
    )


CASES = [
    TransformerConfig(d_model=16, heads=2, enc_layers=2, dec_layers=1, ffn_dim=24),
    TransformerConfig(
        d_model=12,
        heads=3,
        enc_layers=1,
        dec_layers=2,
        ffn_dim=20,
        pre_norm=False,
        positions="learned",
        max_positions=40,
    ),
]


@pytest.mark.parametrize("t", CASES, ids=["prenorm-sinusoidal", "postnorm-learned"])
@pytest.mark.parametrize("tie,shared", [(True, True), (True, False), (False, True)])
def test_parameter_count_formula(t: TransformerConfig, tie: bool, shared: bool) -> None:
    vs, vt = (30, 30) if shared else (30, 25)
    model = build_model(ModelConfig(tie_embeddings=tie, transformer=t), vs, vt, shared)
    assert count_parameters(model) == expected_parameters(t, vs, vt, tie, shared)


def test_default_shape_with_8k_joint_vocab() -> None:
    # 3+3 layers, D 256, 4 heads, FFN 1024, everything tied: the reference shape of issue 7.
    t = TransformerConfig()
    model = build_model(ModelConfig(), 8000, 8000, True)
    assert count_parameters(model) == expected_parameters(t, 8000, 8000, True, True) == 7_578_624


def test_tying() -> None:
    t = TransformerConfig(d_model=16, heads=2, enc_layers=1, dec_layers=1, ffn_dim=24)
    model = TransformerModel(ModelConfig(transformer=t), 20, 20, True)
    assert model.src_embed is model.tgt_embed and model.output.weight is model.tgt_embed.weight
    model = TransformerModel(ModelConfig(transformer=t), 20, 18, False)
    assert model.src_embed is not model.tgt_embed and model.output.weight is model.tgt_embed.weight
    model = TransformerModel(ModelConfig(tie_embeddings=False, transformer=t), 20, 20, True)
    assert model.src_embed is not model.tgt_embed
    assert model.output.weight is not model.tgt_embed.weight


def test_marian_options_off_by_default_and_what_they_change() -> None:
    """The defaults keep the model of earlier versions (no bias buffer, sqrt(D) scaling, ReLU);
    `scale_embeddings=False` multiplies by 1, `output_bias` adds a saved, untrained buffer to
    every logit, and silu is x * sigmoid(x)."""
    default = small_model()
    assert default.logits_bias is None and "logits_bias" not in default.state_dict()
    assert default.embed_scale == 4.0 and default.encoder_layers[0].ffn.activation is F.relu
    torch.manual_seed(3)
    plain = small_model(pre_norm=False, activation="silu", scale_embeddings=False)
    torch.manual_seed(3)
    biased = small_model(pre_norm=False, activation="silu", scale_embeddings=False,
                         output_bias=True)  # fmt: skip
    assert plain.embed_scale == 1.0
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(plain.encoder_layers[0].ffn.activation(x), x * torch.sigmoid(x))
    assert "logits_bias" in biased.state_dict()
    assert "logits_bias" not in dict(biased.named_parameters())  # never trained
    with torch.no_grad():
        biased.logits_bias.copy_(torch.arange(20.0))
    src, src_mask, tgt = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            biased(src, src_mask, tgt), plain(src, src_mask, tgt) + torch.arange(20.0)
        )


def small_model(**kw: object) -> TransformerModel:
    base = dict(
        d_model=16,
        heads=4,
        enc_layers=2,
        dec_layers=2,
        ffn_dim=24,
        dropout=0.0,
        attn_dropout=0.0,
        max_positions=32,
    )
    base.update(kw)
    cfg = ModelConfig(transformer=TransformerConfig(**base))  # type: ignore[arg-type]
    return TransformerModel(cfg, 20, 20, True).eval()


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src = torch.randint(4, 20, (3, 8))
    src_mask = torch.arange(8)[None, :] < torch.tensor([8, 5, 1])[:, None]
    return src.masked_fill(~src_mask, PAD_ID), src_mask, torch.randint(4, 20, (3, 6))


@pytest.mark.parametrize("pre_norm", [True, False])
@torch.no_grad()
def test_fused_and_exact_paths_agree(pre_norm: bool) -> None:
    model = small_model(pre_norm=pre_norm)
    src, src_mask, tgt = padded_batch()
    fused = model(src, src_mask, tgt)
    exact, attn = model.forward_with_attention(src, src_mask, tgt)
    torch.testing.assert_close(fused, exact, atol=1e-5, rtol=0)
    assert attn.shape == (3, 2, 4, 6, 8) and attn.dtype == torch.float32
    state_fused = state_exact = model.encode(src, src_mask)
    for t in range(tgt.size(1)):
        lp_fused, state_fused, none = model.decode_step(tgt[:, t], state_fused)
        lp_exact, state_exact, step_attn = model.decode_step(tgt[:, t], state_exact, True)
        assert none is None
        torch.testing.assert_close(lp_fused, lp_exact, atol=1e-5, rtol=0)
        torch.testing.assert_close(step_attn, attn[:, :, :, t], atol=1e-5, rtol=0)


@torch.no_grad()
def test_cache_grows_one_position_per_step() -> None:
    model = small_model()
    src, src_mask, tgt = padded_batch()
    state = model.encode(src, src_mask)
    assert state.step == 0 and all(k.shape == (0, 3, 4, 4) for k in state.self_k)
    assert all(k.shape == (3, 4, 8, 4) for k in state.cross_k)
    for t in range(3):
        _, state, _ = model.decode_step(tgt[:, t], state)
        assert state.step == t + 1  # time-major caches: position t filled, room for more
        assert all(k.size(0) > t and k.shape[1:] == (3, 4, 4) for k in state.self_k + state.self_v)
    picked = state.select(torch.tensor([1, 1]), torch.tensor([1]))  # two hypotheses of sentence 1
    assert picked.step == 3 and picked.self_k[0][:3].shape == (3, 2, 4, 4)
    assert torch.equal(picked.self_k[0][:3], state.self_k[0][:3, [1, 1]])
    assert torch.equal(picked.src_mask, src_mask[[1]]) and picked.cross_k[0].shape == (1, 4, 8, 4)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_too_many_positions_is_an_error(positions: str) -> None:
    model = small_model(positions=positions, max_positions=6)
    src, src_mask, tgt = padded_batch()  # 8 source positions
    with pytest.raises(ValueError, match="max_positions"):
        model(src, src_mask, tgt)


@torch.no_grad()
def test_torch_compile_full_graph() -> None:
    """forward and decode_step trace into single graphs (no graph breaks); the eager backend keeps
    the test fast while checking what Dynamo sees."""
    torch._dynamo.reset()
    model = small_model()
    src, src_mask, tgt = padded_batch()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(src, src_mask, tgt), model(src, src_mask, tgt))
    step = torch.compile(model.decode_step, backend="eager", fullgraph=True)
    state = ref = model.encode(src, src_mask)
    for t in range(3):
        lp, state, _ = step(tgt[:, t], state)
        ref_lp, ref, _ = model.decode_step(tgt[:, t], ref)
        torch.testing.assert_close(lp, ref_lp)
