"""What a causal language model predicts: text generation and the logit lens.

Both need the model's own head (and final norm), so they live beside capture, the other code
that runs models.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from models.errors import TooManyTokensError, UnsupportedModelError

LENS_TOP_K = 5  # predictions per layer and position


def require_causal(handle) -> None:
    if not handle.is_causal:
        raise UnsupportedModelError(
            f"{handle.name} is not a causal language model; generation and the logit lens need a decoder "
            "such as smollm2"
        )


# (step, the text of every token so far with the new one last, [layers, heads, n] attention that chose it)
TokenDone = Callable[[int, list[str], np.ndarray], None]


def generate(
    handle,
    text: str,
    max_new_tokens: int,
    sample: bool,
    seed: int,
    temperature: float,
    on_token: TokenDone | None = None,
) -> str:
    """Prompt + continuation as text. Greedy, or sampled with a fixed seed so a shared link
    regenerates the same continuation (a generator of its own: no other thread moves it).

    One forward pass per new token, over the key/value cache, so each token can be announced as
    it is chosen: ``on_token(step, pieces, attention)`` hears it (``pieces``: each token's text,
    the prompt's and the new ones, n + 1 of them) with the attention row of the query that chose
    it (the token before it), every layer and head over the ``n`` tokens before it
    ``[layers, heads, n]``. An exception it raises (a cancelled request) stops the generation.
    Stops after ``max_new_tokens`` or at the model's end-of-text token (kept, as generate does).
    """
    require_causal(handle)
    ids = handle.tokenizer(text, return_tensors="pt")["input_ids"].to(handle.device)
    if ids.shape[1] + max_new_tokens > handle.max_tokens:
        raise TooManyTokensError(
            f"the prompt ({ids.shape[1]} tokens) plus {max_new_tokens} new tokens exceeds {handle.max_tokens}"
        )
    stops = _stop_ids(handle)
    new: list[int] = []
    pieces = [handle.tokenizer.decode([token]) for token in ids[0].tolist()] if on_token else []
    with handle.lock, torch.inference_mode():
        generator = torch.Generator(device=handle.device).manual_seed(seed)
        past, step_input = None, ids
        for step in range(max_new_tokens):
            output = handle.model(
                input_ids=step_input,
                past_key_values=past,
                use_cache=True,
                output_attentions=on_token is not None,
                logits_to_keep=1,
            )
            past = output.past_key_values
            token = _choose(output.logits[0, -1].float(), sample, temperature, generator)
            new.append(token)
            if on_token is not None:
                pieces.append(handle.tokenizer.decode([token]))
                rows = torch.stack([layer[0, :, -1, :] for layer in output.attentions])  # [layers, heads, n]
                on_token(step, pieces, rows.float().cpu().numpy())
            if token in stops:
                break
            step_input = torch.tensor([[token]], device=handle.device)
    return text + handle.tokenizer.decode(new, skip_special_tokens=False)


def _choose(logits: torch.Tensor, sample: bool, temperature: float, generator: torch.Generator) -> int:
    """The next token from the last position's logits ``[vocab]``: the most likely one, or one
    drawn from softmax(logits / temperature) over the whole vocabulary."""
    if not sample:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _stop_ids(handle) -> set[int]:
    """The model's end-of-text token ids (its generation config may list several)."""
    config = getattr(handle.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = handle.tokenizer.eos_token_id
    return {int(token) for token in ([] if eos is None else eos if isinstance(eos, list) else [eos])}


def _final_norm(model):
    """The norm applied before the unembedding (``norm`` in Llama-likes, ``ln_f`` in GPT-2)."""
    base = model.base_model
    for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm"):
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return getattr(base, name)
    raise UnsupportedModelError(f"cannot find the final norm of {type(model).__name__} for the logit lens")


def logit_lens(handle, text: str, start: int, count: int) -> dict[str, np.ndarray]:
    """Top-k next-token predictions read from the residual stream after the embeddings and each
    layer, at positions ``start .. start + count - 1``.

    Causal attention means positions up to ``start + count`` need only that prefix, so a window
    deep in a long prompt costs one prefix forward pass. Returns ``ids`` int32 [L + 1, count, k]
    and ``probs`` float32 [L + 1, count, k].
    """
    require_causal(handle)
    ids = handle.tokenizer(text)["input_ids"][: start + count]
    if start >= len(ids):
        raise ValueError(f"'start' must be below the prompt's {len(ids)} tokens")
    head, norm = handle.model.get_output_embeddings(), _final_norm(handle.model)
    with handle.lock, torch.inference_mode():
        output = handle.model(
            input_ids=torch.tensor([ids], device=handle.device),
            output_hidden_states=True,
            use_cache=False,
            logits_to_keep=1,
        )
        states = torch.stack([h[0, start:] for h in output.hidden_states])  # [L + 1, count, D]
        # the last hidden state already has the final norm applied
        normed = torch.cat([norm(states[:-1]), states[-1:]])
        probs = torch.softmax(head(normed).float(), dim=-1)  # [L + 1, count, V]
        top = probs.topk(LENS_TOP_K, dim=-1)
    return {"ids": top.indices.int().cpu().numpy(), "probs": top.values.cpu().numpy()}


def token_texts(handle, ids: np.ndarray) -> dict[int, str]:
    """Display text of each distinct token id (what the lens shows in its cells)."""
    unique = sorted({int(i) for i in np.unique(ids)})
    return {token_id: handle.tokenizer.decode([token_id]) for token_id in unique}


PROBE_MIN_LETTERS = 3  # letters of a word drawn for a repeated random sequence
PROBE_MAX_DRAWS = 100  # draws per word before giving up (a vocabulary with no such words)


def repeated_random_words(handle, length: int, seed: int) -> str:
    """``length`` seeded random words, each one token of the model's vocabulary, then the same
    words again: the repeated random-token sequence of induction-head studies (Olsson et al.
    2022) as text, so it is analysed like any prompt. Words that tokenize back to one token make
    the second half repeat the first token for token.

    Raises UnsupportedModelError when the vocabulary has too few plain words.
    """
    tokenizer = handle.tokenizer
    rng = np.random.default_rng(seed)
    words: list[str] = []
    for _ in range(length * PROBE_MAX_DRAWS):
        if len(words) == length:
            break
        word = tokenizer.decode([int(rng.integers(tokenizer.vocab_size))]).strip()
        plain = len(word) >= PROBE_MIN_LETTERS and word.isascii() and word.isalpha() and word not in words
        if plain and len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1:
            words.append(word)
    if len(words) < length:
        raise UnsupportedModelError(f"{handle.name}'s vocabulary has too few whole-word tokens for a random sequence")
    return " ".join(words + words)
