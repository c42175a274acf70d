"""Encoder-decoder models (T5, BART, Marian...): encoder, decoder and cross-attention in one record.

The record lays the encoder's tokens and then the decoder's tokens along one axis of N = Ne + Nd
positions, and lists the attention layers in the order the model runs them: every encoder layer,
then each decoder block's self-attention and cross-attention. Each layer fills only its own block
of the N x N matrix (encoder rows x encoder keys, decoder rows x decoder keys, or decoder rows x
encoder keys) and masks the rest, so every view, share link and export that reads a self-attention
record reads this one unchanged: the head view draws cross-attention as lines from decoder tokens
to encoder tokens, the token view shows where a decoder token reads the source. ``info`` names
each layer's kind and where the two segments lie.

The decoder reads a target text, teacher-forced: the user's, or by default the model's own greedy
output, which is then analysed like a text the user typed (so a shared link reproduces it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from models.errors import TooManyTokensError, UnsupportedModelError
from models.record import Capture
from models.recorder import (
    ATTENTION_KEEP_BYTES,
    LayerDone,
    Recorder,
    Tokenized,
    allowed_positions,
    assemble,
    new_recorder,
    recorded_forward,
    state_norms,
    tokenize,
)

DEFAULT_TARGET_TOKENS = 32  # new tokens of greedy output when the user gives no target text
CROSS_NAME = re.compile(r"cross|encdec|encoder_attn", re.IGNORECASE)  # module names of cross-attention
KINDS = ("encoder", "decoder", "cross")


def is_encoder_decoder(config) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def stack_sizes(config) -> tuple[int, int]:
    """(encoder layers, decoder layers) under the names T5- and BART-style configs use."""

    def first(*names: str) -> int:
        return next(int(getattr(config, name)) for name in names if getattr(config, name, None) is not None)

    encoder = first("encoder_layers", "num_layers", "num_hidden_layers")
    return encoder, first("decoder_layers", "num_decoder_layers", "num_layers", "num_hidden_layers")


def attention_layers(config) -> int:
    """Attention layers in one pass: each encoder layer, and self + cross in each decoder block."""
    encoder, decoder = stack_sizes(config)
    return encoder + 2 * decoder


def check_heads(config) -> None:
    """One record holds one head count; BART-style configs may give the two stacks different ones."""
    encoder = getattr(config, "encoder_attention_heads", None)
    decoder = getattr(config, "decoder_attention_heads", None)
    if encoder is not None and decoder is not None and encoder != decoder:
        raise UnsupportedModelError(
            f"the encoder has {encoder} attention heads and the decoder {decoder}; Attention Atlas shows "
            "encoder-decoder models whose two stacks have the same number of heads"
        )


@dataclass
class _SegmentRecorder(Recorder):
    """Places each layer's block on the combined encoder + decoder axis, then records it."""

    encoder_tokens: int = 0
    kinds: list[str] = field(default_factory=list)

    def record(self, module, query, key, value, attention_mask, scaling: float, weights=None, lse=None) -> None:
        kind = self._kind(module, query, key)
        rows, cols = self._block(kind)
        n = self.n_tokens
        allowed = _allowed(attention_mask, query.shape[-2], key.shape[-2], query.device)
        full_mask = torch.zeros((1, 1, n, n), dtype=torch.bool, device=query.device)
        full_mask[..., rows, cols] = allowed
        if weights is not None:
            full_weights = weights.new_zeros((*weights.shape[:2], n, n))
            full_weights[..., rows, cols] = weights
            weights = full_weights
        if lse is not None:
            full_lse = lse.new_zeros((*lse.shape[:2], n))
            full_lse[..., rows] = lse
            lse = full_lse
        self.kinds.append(kind)
        super().record(
            module,
            _placed(query, rows, n),
            _placed(key, cols, n),
            _placed(value, cols, n),
            full_mask,
            scaling,
            weights=weights,
            lse=lse,
        )

    def _kind(self, module, query, key) -> str:
        name = self.names.get(id(module), "")
        if "decoder" not in name.split("."):
            return "encoder"
        cross = query.shape[-2] != key.shape[-2] or CROSS_NAME.search(name) is not None
        return "cross" if cross else "decoder"

    def _block(self, kind: str) -> tuple[slice, slice]:
        encoder, decoder = slice(0, self.encoder_tokens), slice(self.encoder_tokens, self.n_tokens)
        return {"encoder": (encoder, encoder), "decoder": (decoder, decoder), "cross": (decoder, encoder)}[kind]


def _placed(states: torch.Tensor, positions: slice, n: int) -> torch.Tensor:
    """[1, H, s, d] states at ``positions`` of a zero [1, H, n, d] tensor."""
    full = states.new_zeros((*states.shape[:2], n, states.shape[-1]))
    full[..., positions, :] = states
    return full


def _allowed(attention_mask, queries: int, keys: int, device) -> torch.Tensor:
    """[q, k] bool: where the model's mask (bool or additive, possibly broadcast) lets a query read."""
    if attention_mask is None:
        return torch.ones((queries, keys), dtype=torch.bool, device=device)
    mask = attention_mask[0, 0, -queries:, :keys] if attention_mask.shape[-2] >= queries else attention_mask[0, 0]
    return allowed_positions(mask).expand(queries, keys)


def generated_decoder(handle, source_ids: list[int], max_new_tokens: int) -> tuple[Tokenized, str]:
    """The model's own greedy output for the source (what a user of the model would see), as
    the decoder's input, exactly the ids it generated (start token first), and as text."""
    if not (hasattr(handle.model, "can_generate") and handle.model.can_generate()):
        raise UnsupportedModelError(
            f"{handle.name} has no language-model head to write the decoder's text; give the decoder text yourself"
        )
    ids = torch.tensor([source_ids], device=handle.device)
    with handle.lock, torch.inference_mode():
        output = handle.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
        )
    return tokens_of_ids(handle.tokenizer, output[0].tolist())


def tokens_of_ids(tokenizer, ids: list[int]) -> tuple[Tokenized, str]:
    """Tokens of generated ids with their spans in the decoded text (decoding longer and longer
    prefixes: a token's text is what it adds), and that text."""
    special_ids = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    text, tokens, spans, kept = "", [], [], []
    for token_id, piece in zip(ids, pieces):
        if token_id in special_ids:
            tokens.append(piece)
            spans.append((len(text), len(text)))
            continue
        kept.append(token_id)
        longer = tokenizer.decode(kept)
        start = len(text) if longer.startswith(text) else len(longer)
        tokens.append(longer[start:] if longer.startswith(text) else piece)
        spans.append((start, len(longer)))
        text = longer
    special = np.array([token_id in special_ids for token_id in ids], dtype=bool)
    return Tokenized(ids, pieces, tokens, np.asarray(spans, dtype=np.int32).reshape(-1, 2), special), text


def decoder_tokens(handle, target: str, max_tokens: int) -> Tokenized:
    """The decoder's input: its start token, then the target text's tokens (teacher forcing),
    at most ``max_tokens`` in all."""
    tokenizer = handle.tokenizer
    start = handle.config.decoder_start_token_id
    if start is None:
        raise UnsupportedModelError(f"{handle.name} names no decoder start token")
    try:
        body = tokenize(tokenizer, target, max_tokens - 1) if target else _no_tokens()
    except TooManyTokensError:
        raise TooManyTokensError(
            f"the decoder text is {len(tokenizer(target)['input_ids'])} tokens; with this prompt at most "
            f"{max_tokens - 1} fit (source and decoder tokens share the limit)"
        ) from None
    piece = tokenizer.convert_ids_to_tokens(start)
    return Tokenized(
        [start, *body.ids],
        [piece, *body.pieces],
        [piece, *body.tokens],
        np.concatenate([np.zeros((1, 2), np.int32), body.spans]),
        np.concatenate([[True], body.special]),
    )


def _no_tokens() -> Tokenized:
    return Tokenized([], [], [], np.zeros((0, 2), np.int32), np.zeros(0, bool))


def _joined(source: Tokenized, target: Tokenized) -> Tokenized:
    return Tokenized(
        source.ids + target.ids,
        source.pieces + target.pieces,
        source.tokens + target.tokens,
        np.concatenate([source.spans, target.spans]).astype(np.int32),
        np.concatenate([source.special, target.special]).astype(bool),
    )


def _hidden_norms(output, kinds: list[str]) -> np.ndarray:
    """[L + 1, N] residual-stream norms: after the embeddings, then after each recorded layer.

    A decoder block's self- and cross-attention rows both hold the norm after the whole block
    (transformers returns one hidden state per block); encoder tokens keep the encoder's output
    through the decoder layers, decoder tokens their embeddings through the encoder layers.
    """
    encoder = [state_norms(h) for h in output.encoder_hidden_states]  # Le + 1 of [Ne]
    decoder = [state_norms(h) for h in output.decoder_hidden_states]  # Ld + 1 of [Nd]
    rows, enc, dec = [torch.cat([encoder[0], decoder[0]])], 0, 0
    for kind in kinds:
        if kind == "encoder":
            enc += 1
        elif kind == "cross":
            dec += 1
        rows.append(torch.cat([encoder[min(enc, len(encoder) - 1)], decoder[dec]]))
    return torch.stack(rows).cpu().numpy()


def run_seq2seq_capture(
    handle,
    text: str,
    target: str,
    *,
    precision: str = "float16",
    keep_attention_bytes: int = ATTENTION_KEEP_BYTES,
    max_tokens: int | None = None,
    on_layer: LayerDone | None = None,
    reserve: Callable[[int], None] | None = None,
) -> Capture:
    """Encode ``text``, decode ``target`` (the model's greedy output when empty), record every
    attention layer of both stacks. Arguments and errors as :func:`models.capture.run_capture`."""
    started = time.perf_counter()
    check_heads(handle.config)
    limit = min(max_tokens or handle.max_tokens, handle.max_tokens)
    source = tokenize(handle.tokenizer, text, limit - 1)  # room for the decoder's start token
    room = limit - len(source.ids)  # decoder tokens, start token included
    new_tokens = min(DEFAULT_TARGET_TOKENS, room - 1)
    if target or new_tokens < 1:
        decoder = decoder_tokens(handle, target, room)
    else:
        decoder, target = generated_decoder(handle, source.ids, new_tokens)
    tokens = _joined(source, decoder)
    n, description = len(tokens.ids), handle.describe()  # its "layers" counts both stacks' attention
    layers = description["layers"]
    recorder = new_recorder(
        _SegmentRecorder, handle, n, precision, keep_attention_bytes, on_layer, encoder_tokens=len(source.ids)
    )
    output, forward_seconds = recorded_forward(
        handle,
        recorder,
        reserve,
        input_ids=torch.tensor([source.ids], device=handle.device),
        decoder_input_ids=torch.tensor([decoder.ids], device=handle.device),
    )
    if len(recorder.layers) != layers:
        raise UnsupportedModelError(
            f"{type(handle.model).__name__} ran {len(recorder.layers)} attention layers through transformers' "
            f"AttentionInterface, expected {layers}; its attention cannot be captured"
        )
    hidden_norms = _hidden_norms(output, recorder.kinds)
    del output
    capture = assemble(
        handle.name,
        text,
        tokens,
        recorder,
        hidden_norms,
        description,
        forward_seconds,
        started,
    )
    capture.info.update(
        {
            "encoder_decoder": True,
            "target": target,
            "segments": {"encoder": [0, len(source.ids)], "decoder": [len(source.ids), n]},
            "layer_kinds": recorder.kinds,
        }
    )
    return capture
