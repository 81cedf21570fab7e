"""The decoding protocol of `nmt.models`, checked on both families and every attention variant:
padding changes nothing, attention rows are distributions over the real source, incremental
decoding equals teacher forcing, `state.select` equals decoding the reordered batch, and a tiny
model of each family learns a toy task through `decode_step`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import model_config

from nmt.config import BOS_ID, EOS_ID, PAD_ID, ModelConfig
from nmt.models import build_model

V = 17  # 4 special ids + 13 ordinary tokens
SRC_LENS = [7, 5, 2, 6]
TGT_LENS = [6, 3, 5, 1]  # real target-input lengths (BOS included)


def rnn_config(**kw: object) -> ModelConfig:
    """tests/tiny.py's small RNN, two layers each side and narrower, with a local window of 2."""
    shape = {"hidden_size": 12, "attn_dim": 10, "enc_layers": 2, "dec_layers": 2, "local_window": 2}
    return model_config("rnn", **{**shape, **kw})


def transformer_config(**kw: object) -> ModelConfig:
    """tests/tiny.py's small Transformer with 4 heads and a narrower feed-forward layer."""
    return model_config("transformer", **{"heads": 4, "ffn_dim": 24, **kw})


CONFIGS = {
    **{
        f"rnn-{att}-{cell}": rnn_config(attention=att, cell=cell)
        for att in ("bahdanau", "luong-dot", "luong-general", "local", "local-m", "hard")
        for cell in ("gru", "lstm")
    },
    "rnn-bahdanau-gru-nofeed": rnn_config(input_feeding=False),
    "rnn-luong-general-lstm-nofeed": rnn_config(
        attention="luong-general", cell="lstm", input_feeding=False
    ),
    "rnn-local-gru-1layer": rnn_config(attention="local", enc_layers=1, dec_layers=1),
    "rnn-local-m-gru-nofeed": rnn_config(attention="local-m", input_feeding=False),
    "transformer-prenorm": transformer_config(),
    "transformer-postnorm-learned-gelu": transformer_config(
        pre_norm=False, positions="learned", activation="gelu"
    ),
    # What an imported Marian model has (nmt/pretrained.py), unscaled embeddings for the variety.
    "transformer-postnorm-silu-bias": transformer_config(
        pre_norm=False, activation="silu", scale_embeddings=False, output_bias=True
    ),
}


def make_model(name: str, shared_vocab: bool = True) -> torch.nn.Module:
    torch.manual_seed(1)
    model = build_model(CONFIGS[name], V, V, shared_vocab).eval()
    if getattr(model, "logits_bias", None) is not None:
        model.logits_bias.normal_()  # starts at 0; random, so that every path must add it
    return model


def make_batch(extra_pad: int = 0, pad_fill: int | None = None) -> tuple[torch.Tensor, ...]:
    """src_ids (4,S), src_mask, tgt_in_ids (4,T). `extra_pad` adds padding columns; `pad_fill`
    writes that id (instead of PAD) into every padded position, which a correct model ignores."""
    gen = torch.Generator().manual_seed(7)
    b, s, t = len(SRC_LENS), max(SRC_LENS), max(TGT_LENS)
    src = torch.randint(4, V, (b, s), generator=gen)
    tgt = torch.randint(4, V, (b, t), generator=gen)
    tgt[:, 0] = BOS_ID
    src = F.pad(src, (0, extra_pad), value=PAD_ID)  # the same real tokens, more padding
    tgt = F.pad(tgt, (0, extra_pad), value=PAD_ID)
    s, t = s + extra_pad, t + extra_pad
    src_mask = torch.arange(s)[None, :] < torch.tensor(SRC_LENS)[:, None]
    tgt_real = torch.arange(t)[None, :] < torch.tensor(TGT_LENS)[:, None]
    fill = PAD_ID if pad_fill is None else pad_fill
    src = src.masked_fill(~src_mask, fill)
    tgt = tgt.masked_fill(~tgt_real, fill)
    return src, src_mask, tgt


def real_target(t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(TGT_LENS)[:, None]  # (B, T)


def check_rows(attn: torch.Tensor, src_mask: torch.Tensor) -> None:
    """attn (B, ..., S): every row sums to 1 over real positions and is exactly 0 on padding."""
    mask = src_mask.view(src_mask.size(0), *([1] * (attn.dim() - 2)), src_mask.size(1))
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]), atol=1e-5, rtol=0)
    assert torch.equal(
        attn.masked_select(~mask.expand_as(attn)),
        torch.zeros(0).new_zeros(int((~mask).expand_as(attn).sum())),
    )
    assert (attn >= 0).all()


def decode_all(model: torch.nn.Module, src, src_mask, tgt, need_attention=True):
    """Feed tgt (B,T) through decode_step; stack log-probs (B,T,V) and attention (B,T,...,S)."""
    state = model.encode(src, src_mask)
    log_probs, attns = [], []
    for t in range(tgt.size(1)):
        lp, state, attn = model.decode_step(tgt[:, t], state, need_attention=need_attention)
        log_probs.append(lp)
        attns.append(attn)
    if not need_attention:
        return torch.stack(log_probs, 1), None
    return torch.stack(log_probs, 1), torch.stack(attns, 1)


def attn_of_forward(name: str, attn: torch.Tensor) -> torch.Tensor:
    """Bring forward()'s attention to decode order: RNN (B,T,S); Transformer (B,L,H,T,S) ->
    (B,T,L,H,S)."""
    return attn.permute(0, 3, 1, 2, 4) if name.startswith("transformer") else attn


@pytest.mark.parametrize("name", CONFIGS)
def test_padding_changes_nothing_in_forward(name: str) -> None:
    model = make_model(name)
    src, src_mask, tgt = make_batch()
    logits, attn = model.forward_with_attention(src, src_mask, tgt)
    real = real_target(tgt.size(1))
    for extra, fill in ((0, 9), (3, PAD_ID), (3, 11)):
        src2, mask2, tgt2 = make_batch(extra, fill)
        logits2, attn2 = model.forward_with_attention(src2, mask2, tgt2)
        s, t = src.size(1), tgt.size(1)
        torch.testing.assert_close(logits2[:, :t][real], logits[real], atol=1e-5, rtol=0)
        a, a2 = attn_of_forward(name, attn), attn_of_forward(name, attn2)
        torch.testing.assert_close(a2[:, :t, ..., :s][real], a[real], atol=1e-5, rtol=0)
        assert (a2[..., s:] == 0).all()
        check_rows(attn2, mask2)


@pytest.mark.parametrize("name", CONFIGS)
def test_padding_changes_nothing_in_decode_step(name: str) -> None:
    model = make_model(name)
    src, src_mask, tgt = make_batch()
    lp, attn = decode_all(model, src, src_mask, tgt)
    check_rows(attn, src_mask)
    src2, mask2, _ = make_batch(4, 13)  # other ids on padding, and more of it
    lp2, attn2 = decode_all(model, src2, mask2, tgt)
    torch.testing.assert_close(lp2, lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(attn2[..., : src.size(1)], attn, atol=1e-5, rtol=0)
    check_rows(attn2, mask2)


@pytest.mark.parametrize("name", CONFIGS)
def test_incremental_equals_teacher_forcing(name: str) -> None:
    model = make_model(name)
    src, src_mask, tgt = make_batch()
    logits, attn = model.forward_with_attention(src, src_mask, tgt)
    lp, step_attn = decode_all(model, src, src_mask, tgt)
    assert lp.dtype == torch.float32
    assert (lp - F.log_softmax(logits, -1)).abs().max() < 1e-5
    assert (step_attn - attn_of_forward(name, attn)).abs().max() < 1e-5
    # Without attention the same log-probs come back, and no weights.
    lp_off, _ = decode_all(model, src, src_mask, tgt, need_attention=False)
    assert (lp_off - lp).abs().max() < 1e-5
    state = model.encode(src, src_mask)
    assert model.decode_step(tgt[:, 0], state)[2] is None


@pytest.mark.parametrize("name", CONFIGS)
def test_attention_shapes(name: str) -> None:
    model = make_model(name)
    src, src_mask, tgt = make_batch()
    b, s = src.shape
    logits, attn = model.forward_with_attention(src, src_mask, tgt)
    assert logits.shape == (b, tgt.size(1), V)
    state = model.encode(src, src_mask)
    _, _, step_attn = model.decode_step(tgt[:, 0], state, need_attention=True)
    if name.startswith("transformer"):
        t = CONFIGS[name].transformer
        assert attn.shape == (b, t.dec_layers, t.heads, tgt.size(1), s)
        assert step_attn.shape == (b, t.dec_layers, t.heads, s)
    else:
        assert attn.shape == (b, tgt.size(1), s)
        assert step_attn.shape == (b, s)


@pytest.mark.parametrize("name", CONFIGS)
def test_select_equals_decoding_the_reordered_batch(name: str) -> None:
    model = make_model(name)
    src, src_mask, tgt = make_batch()
    tgt = tgt.masked_fill(tgt == PAD_ID, 5)  # a real prefix for every row
    state = model.encode(src, src_mask)
    for t in range(3):
        _, state, _ = model.decode_step(tgt[:, t], state)
    # Reorder, duplicate and drop (row 3 goes), each row with its own copy of its source.
    idx = torch.tensor([2, 0, 0, 1, 2])
    state = state.select(idx, idx)
    ref_state = model.encode(src[idx], src_mask[idx])
    for t in range(3):
        _, ref_state, _ = model.decode_step(tgt[idx, t], ref_state)
    for t in range(3, tgt.size(1)):
        lp, state, attn = model.decode_step(tgt[idx, t], state, need_attention=True)
        ref_lp, ref_state, ref_attn = model.decode_step(tgt[idx, t], ref_state, True)
        torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
        torch.testing.assert_close(attn, ref_attn, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp[1], lp[2], atol=0, rtol=0)  # duplicated rows stay identical


@pytest.mark.parametrize("name", CONFIGS)
def test_source_side_once_per_sentence_changes_no_bit(name: str) -> None:
    # Beam search's layout: two hypothesis rows per sentence read one copy of its source side.
    # It must give bit for bit what a copy per row gives, through moves within the sentences and
    # a step after which a sentence leaves.
    model = make_model(name)
    src, src_mask, tgt = make_batch()
    tgt = tgt.masked_fill(tgt == PAD_ID, 5)
    b = src.size(0)
    pairs = torch.arange(b).repeat_interleave(2)
    shared = model.encode(src, src_mask).select(pairs)  # b source rows for 2b hypotheses
    copied = model.encode(src, src_mask).select(pairs, pairs)  # 2b source rows
    step_ids = tgt[pairs]
    step_ids[1::2] = torch.roll(step_ids[1::2], 1, dims=1)  # the two beams of a sentence differ
    within = torch.arange(2 * b).view(-1, 2).flip(1).reshape(-1)  # swap each pair
    later = torch.arange(1, b)  # sentence 0 leaves
    later_rows = torch.arange(2, 2 * b)
    for t in range(4):
        lp, shared, attn = model.decode_step(step_ids[:, t], shared, need_attention=True)
        ref_lp, copied, ref_attn = model.decode_step(step_ids[:, t], copied, True)
        torch.testing.assert_close(lp, ref_lp, atol=0, rtol=0)
        torch.testing.assert_close(attn, ref_attn, atol=0, rtol=0)
        if t == 1:
            shared, copied = shared.select(within), copied.select(within, within)
            step_ids = step_ids[within]
        if t == 2:
            shared, copied = shared.select(later_rows, later), copied.select(later_rows, later_rows)
            step_ids = step_ids[later_rows]
    assert lp.size(0) == 2 * (b - 1)


@pytest.mark.parametrize("name", ["rnn-bahdanau-lstm", "transformer-prenorm"])
def test_dropout_only_in_train_mode(name: str) -> None:
    cfg = CONFIGS[name]
    if cfg.arch == "rnn":
        cfg = rnn_config(cell="lstm", dropout=0.3)
    else:
        cfg = transformer_config(dropout=0.3, attn_dropout=0.3)
    model = build_model(cfg, V, V, True)
    src, src_mask, tgt = make_batch()
    model.train()
    assert not torch.equal(model(src, src_mask, tgt), model(src, src_mask, tgt))
    model.eval()
    torch.testing.assert_close(model(src, src_mask, tgt), model(src, src_mask, tgt), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["rnn-local-lstm", "transformer-prenorm"])
def test_bf16_autocast_gives_float32_log_probs(name: str) -> None:
    model = make_model(name)
    src, src_mask, tgt = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, src_mask, tgt)
        lp, attn = decode_all(model, src, src_mask, tgt)
    assert torch.isfinite(logits).all()
    assert lp.dtype == torch.float32 and attn.dtype == torch.float32
    ref = F.log_softmax(model(src, src_mask, tgt).float(), -1)
    assert (lp - ref)[real_target(tgt.size(1))].abs().max() < 0.25  # bf16 has 8 mantissa bits
    check_rows(attn, src_mask)


# --- learning a toy task ------------------------------------------------------------------------


def reverse_corpus(n: int = 20) -> tuple[list[list[int]], list[list[int]]]:
    """n pairs of random digit strings (ids 4..13, length 3..7) and their reversals."""
    gen = torch.Generator().manual_seed(3)
    srcs, tgts = [], []
    for _ in range(n):
        length = int(torch.randint(3, 8, (1,), generator=gen))
        s = torch.randint(4, 14, (length,), generator=gen).tolist()
        srcs.append(s)
        tgts.append(s[::-1])
    return srcs, tgts


def pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD_ID)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


@torch.no_grad()
def greedy(model: torch.nn.Module, src: torch.Tensor, src_mask: torch.Tensor, max_len: int):
    """Greedy decoding through the protocol: token lists cut before the first EOS."""
    state = model.encode(src, src_mask)
    prev = torch.full((src.size(0),), BOS_ID)
    steps = []
    for _ in range(max_len):
        log_probs, state, _ = model.decode_step(prev, state)
        prev = log_probs.argmax(-1)
        steps.append(prev)
    out = []
    for row in torch.stack(steps, 1).tolist():
        out.append(row[: row.index(EOS_ID)] if EOS_ID in row else row)
    return out


@pytest.mark.parametrize(
    "cfg,lr",
    [
        (rnn_config(emb_dim=32, hidden_size=64, attn_dim=32, enc_layers=1, dec_layers=1), 1e-2),
        (
            rnn_config(
                emb_dim=32,
                hidden_size=64,
                enc_layers=1,
                dec_layers=1,
                cell="lstm",
                attention="luong-general",
            ),
            1e-2,
        ),
        (
            rnn_config(
                emb_dim=32,
                hidden_size=64,
                attn_dim=32,
                enc_layers=1,
                dec_layers=1,
                attention="hard",
            ),
            1e-2,
        ),
        (transformer_config(d_model=32, heads=2, ffn_dim=64, max_positions=16), 3e-3),
    ],
    ids=["rnn-bahdanau-gru", "rnn-luong-general-lstm", "rnn-hard-gru", "transformer"],
)
def test_tiny_model_learns_to_reverse(cfg: ModelConfig, lr: float) -> None:
    srcs, tgts = reverse_corpus()
    src = pad(srcs)
    src_mask = src != PAD_ID
    tgt_in = pad([[BOS_ID, *t] for t in tgts])
    tgt_out = pad([[*t, EOS_ID] for t in tgts])
    torch.manual_seed(0)
    model = build_model(cfg, 14, 14, True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    learned_at = None
    for step in range(1, 401):
        model.train()
        logits = model(src, src_mask, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, 14), tgt_out.reshape(-1), ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        if step == 1:  # every parameter, attention included, gets a gradient
            silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
            assert not silent
        optimizer.step()
        if step % 25 == 0:
            model.eval()
            if greedy(model, src, src_mask, max_len=9) == tgts:
                learned_at = step
                break
    assert learned_at is not None, f"not learned in 400 steps (last loss {loss.item():.3f})"
