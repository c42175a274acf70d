"""Prompts of an exact token count, cut from one long, fixed English text.

The text is the Python reference manual's topic help that ships with every CPython
(``pydoc_data.topics``), so every machine builds the same prompts without a download.
"""

from __future__ import annotations

import pydoc_data.topics

MAX_ADJUST_STEPS = 20  # re-tokenize rounds allowed to hit the exact count
VARIANT_STRIDE = 5000  # tokens between the starts of two prompts of the same length


def source_text() -> str:
    """About 100,000 tokens of prose, whitespace collapsed to single spaces."""
    topics = pydoc_data.topics.topics
    return " ".join(" ".join(topics[name].split()) for name in sorted(topics))


def count(tokenizer, text: str) -> int:
    """Tokens the app will see: the tokenizer's ids including any special tokens it adds."""
    return len(tokenizer(text, truncation=False)["input_ids"])


def exact_prompt(tokenizer, n_tokens: int, text: str | None = None, variant: int = 0) -> str:
    """A prompt that tokenizes to exactly ``n_tokens`` tokens (special tokens included);
    ``variant`` k starts k * VARIANT_STRIDE tokens into the text, for distinct prompts of
    one length (each one a fresh, uncached analysis).

    Decoding a prefix of the ids and tokenizing again can merge or split pieces at the cut,
    so the prefix length is corrected until the count matches. Raises ValueError when the
    source text is too short or the count cannot be hit.
    """
    ids = tokenizer(text or source_text(), add_special_tokens=False, truncation=False)["input_ids"]
    ids = ids[variant * VARIANT_STRIDE :]
    special = count(tokenizer, "a") - len(tokenizer("a", add_special_tokens=False)["input_ids"])
    take = n_tokens - special
    for _ in range(MAX_ADJUST_STEPS):
        if not 0 < take <= len(ids):
            break
        prompt = tokenizer.decode(ids[:take], skip_special_tokens=True).strip()
        got = count(tokenizer, prompt)
        if got == n_tokens:
            return prompt
        take += n_tokens - got
    raise ValueError(f"could not build a prompt of exactly {n_tokens} tokens (source has {len(ids)})")
