"""Our Transformer as a CTranslate2 model specification (CTranslate2's Python model-spec API).

CTranslate2 (OpenNMT's C++ inference engine) runs the same maths with its own kernels: int8 or
16-bit weights, fused layers, no Python per step. Export gives users that deployment path and
gives the benchmarks a fair comparison: the same weights decoded by both.

The mapping, sublayer by sublayer (both sides use pre- or post-norm alike):
- embeddings (times sqrt(D) unless `scale_embeddings` is off) plus our position table, given to
  CTranslate2 explicitly, so the half-sines/half-cosines layout and learned positions both carry
  over exactly;
- self-attention: our fused Q|K|V projection is CTranslate2's `linear[0]`, `out_proj` `linear[1]`;
- cross-attention: `q_proj`, the fused K|V `kv_proj` and `out_proj` are `linear[0..2]`;
- LayerNorms: norm1/norm2(/norm3) are the layer norms of the sublayers they precede (pre-norm)
  or follow (post-norm); the stacks' final norms exist only with pre-norm;
- the output layer is the decoder's projection, with `output_bias`'s fixed bias as its bias.

The source gets EOS appended (our encoder reads subwords + EOS) and the decoder starts from BOS.
`ctranslate2` is imported here only: it is an optional dependency (`pip install nmt[export]`).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from nmt.config import BOS_ID, EOS_ID, UNK_ID, DecodeConfig, TransformerConfig
from nmt.errors import ConfigError
from nmt.models.attention import MultiHeadCrossAttention, MultiHeadSelfAttention
from nmt.models.transformer import DecoderLayer, EncoderLayer, FeedForward, TransformerModel

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which every norm of our Transformer uses


def import_ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError as err:
        raise ConfigError(
            "exporting to CTranslate2 needs the ctranslate2 package: pip install 'nmt[export]' "
            "(or pip install ctranslate2)"
        ) from err
    return ctranslate2


def transformer_spec(
    model: TransformerModel, cfg: TransformerConfig, src_pieces: list[str], tgt_pieces: list[str]
) -> Any:
    """A validated `ctranslate2.specs.TransformerSpec` holding `model`'s weights (float32)."""
    import_ctranslate2()
    from ctranslate2.specs import common_spec, transformer_spec

    activations = {
        "gelu": common_spec.Activation.GELU,
        "relu": common_spec.Activation.RELU,
        "silu": common_spec.Activation.SWISH,
    }
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.enc_layers, cfg.dec_layers),
        cfg.heads,
        pre_norm=cfg.pre_norm,
        activation=activations[cfg.activation],
    )
    positions = _numpy(model._positions(0, model.max_positions, torch.device("cpu")))
    encoder, decoder = spec.encoder, spec.decoder
    _set(encoder.embeddings[0], weight=model.src_embed.weight)
    _set(decoder.embeddings, weight=model.tgt_embed.weight)
    for stack in (encoder, decoder):
        stack.scale_embeddings = cfg.scale_embeddings  # times sqrt(D), as `Transformer._embed`
        stack.position_encodings.encodings = positions
    encoder_layers = cast("list[EncoderLayer]", list(model.encoder_layers))
    decoder_layers = cast("list[DecoderLayer]", list(model.decoder_layers))
    for layer_spec, layer in zip(encoder.layer, encoder_layers, strict=True):
        _self_attention(layer_spec.self_attention, layer.self_attn, layer.norm1)
        _feed_forward(layer_spec.ffn, layer.ffn, layer.norm2)
    for layer_spec, dec_layer in zip(decoder.layer, decoder_layers, strict=True):
        _self_attention(layer_spec.self_attention, dec_layer.self_attn, dec_layer.norm1)
        _cross_attention(layer_spec.attention, dec_layer.cross_attn, dec_layer.norm2)
        _feed_forward(layer_spec.ffn, dec_layer.ffn, dec_layer.norm3)
    if cfg.pre_norm:
        _layer_norm(encoder.layer_norm, model.encoder_norm)
        _layer_norm(decoder.layer_norm, model.decoder_norm)
    _set(decoder.projection, weight=model.output.weight, bias=model.logits_bias)

    spec.register_source_vocabulary(src_pieces)
    spec.register_target_vocabulary(tgt_pieces)
    config = spec.config
    config.unk_token = tgt_pieces[UNK_ID]
    config.bos_token = config.decoder_start_token = tgt_pieces[BOS_ID]
    config.eos_token = tgt_pieces[EOS_ID]
    config.add_source_eos = True
    config.layer_norm_epsilon = LAYER_NORM_EPS
    spec.validate()
    return spec


def _numpy(tensor: torch.Tensor) -> Any:
    return tensor.detach().float().cpu().numpy().copy()


def _set(spec: Any, **tensors: torch.Tensor | None) -> None:
    for name, tensor in tensors.items():
        if tensor is not None:
            setattr(spec, name, _numpy(tensor))


def _linear(spec: Any, linear: nn.Linear) -> None:
    _set(spec, weight=linear.weight, bias=linear.bias)


def _layer_norm(spec: Any, norm: nn.Module) -> None:
    if not isinstance(norm, nn.LayerNorm):
        raise ConfigError(f"cannot export a {type(norm).__name__} as a LayerNorm")
    _set(spec, gamma=norm.weight, beta=norm.bias)


def _self_attention(spec: Any, attn: MultiHeadSelfAttention, norm: nn.Module) -> None:
    _linear(spec.linear[0], attn.qkv_proj)  # rows: all heads' Q, then K, then V, as CTranslate2
    _linear(spec.linear[1], attn.out_proj)
    _layer_norm(spec.layer_norm, norm)


def _cross_attention(spec: Any, attn: MultiHeadCrossAttention, norm: nn.Module) -> None:
    _linear(spec.linear[0], attn.q_proj)
    _linear(spec.linear[1], attn.kv_proj)  # rows: K then V
    _linear(spec.linear[2], attn.out_proj)
    _layer_norm(spec.layer_norm, norm)


def _feed_forward(spec: Any, ffn: FeedForward, norm: nn.Module) -> None:
    _linear(spec.linear_0, ffn.fc1)
    _linear(spec.linear_1, ffn.fc2)
    _layer_norm(spec.layer_norm, norm)


# ---- decoding settings -------------------------------------------------------------------------

DECODING_FILE = "nmt-decoding.json"  # written beside the exported model


def translate_options(cfg: DecodeConfig) -> dict[str, Any]:
    """The `ctranslate2.Translator.translate_batch` settings that decode like `cfg`, and the
    differences that remain: {"translate_batch": {...}, "notes": [...],
    "max_decoding_length": {...}, "differences": [...]} (`differences`: this run's settings that
    CTranslate2 cannot reproduce; `notes`: what differs always).

    CTranslate2 divides a finished hypothesis' log-probability by length ** length_penalty, with
    the EOS counted, which is our "power" rule ("avg" is power 1, "none" power 0). Its maximum
    length is one number per call, where ours is floor(a * S + b) per sentence (S = source
    pieces + EOS): pass that number for each sentence, or for groups of equal-length sources.
    """
    options: dict[str, Any] = {
        "beam_size": cfg.beam_size,
        "num_hypotheses": cfg.nbest,
        "min_decoding_length": cfg.min_len,
        "no_repeat_ngram_size": cfg.no_repeat_ngram,
        "disable_unk": cfg.suppress_unk,
        "return_scores": True,
    }
    differences: list[str] = []
    powers = {"power": cfg.len_penalty, "avg": 1.0, "none": 0.0}
    if cfg.length_norm in powers:
        options["length_penalty"] = powers[cfg.length_norm]
    else:
        options["length_penalty"] = cfg.len_penalty
        differences.append(
            f"decode.length_norm={cfg.length_norm}: CTranslate2 has no GNMT length penalty "
            f"((5 + len) / 6) ** {cfg.len_penalty}; it uses len ** {cfg.len_penalty}, so beams "
            "can rank differently. Evaluate with --set decode.length_norm=power to get what the "
            "export gives"
        )
    if cfg.coverage_penalty > 0:
        differences.append(
            f"decode.coverage_penalty={cfg.coverage_penalty}: not passed on; CTranslate2's own "
            "coverage penalty (documented as applied during beam search) is not known to equal "
            "nmt's, which only re-ranks finished hypotheses, so the export ranks without it"
        )
    if cfg.min_len > 0:
        differences.append(
            f"decode.min_len={cfg.min_len}: CTranslate2 renormalises the log-probabilities after "
            "banning EOS, nmt does not, so scores differ by -log(1 - p(EOS)) at those steps and "
            "near ties can go the other way"
        )
    if cfg.sample:
        options.update(sampling_topk=cfg.top_k or 0, sampling_topp=cfg.top_p,
                       sampling_temperature=cfg.temperature, beam_size=1)  # fmt: skip
        differences.append("decode.sample=true: samples come from another random generator")
    return {
        "translate_batch": options,
        # Always so, whatever the settings: worth knowing before comparing outputs.
        "notes": [
            "a hypothesis that reaches the maximum length ends with a forced, scored EOS in nmt "
            "and without one in CTranslate2, so such lines can differ"
        ],
        "max_decoding_length": {
            "rule": "floor(a * (source pieces + 1) + b), per sentence",
            "a": cfg.max_len_a,
            "b": cfg.max_len_b,
        },
        "differences": differences,
    }
