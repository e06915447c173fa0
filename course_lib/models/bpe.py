"""Byte-level BPE in CLIP's manner: text cleanup, pre-tokenization, byte symbols, merges and their training.

Defined in notebook 04_clip_text_embeddings.

Steps 1 to 4 of the tokenizer (``tokenizer`` has the whole list): ``clean_text`` (NFC, whitespace,
lowercase), ``pre_tokenize`` with CLIP's regex into pieces of byte symbols (``bytes_to_unicode``),
the ``</w>`` end-of-word mark and the merges; ``train_bpe`` learns the merges from a corpus.
``words_outside`` finds the words of a prompt a model never saw. With the ``regex`` package
(``HAS_REGEX``) the patterns know Unicode classes; without it a close stand-in from ``re`` is used.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import lru_cache

__all__ = ["BOS_TOKEN", "EOS_TOKEN", "END_OF_WORD", "CLIP_PATTERN", "HAS_REGEX", "words_outside",
           "bytes_to_unicode", "base_vocabulary", "clean_text", "pre_tokenize", "train_bpe"]

try:  # transformers depends on `regex`; it knows Unicode classes such as \p{L}.
    import regex as _regex

    HAS_REGEX = True
except ImportError:  # pragma: no cover - only where `regex` is missing
    _regex = None
    HAS_REGEX = False

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# CLIP's pre-tokenization pattern (OpenAI simple_tokenizer.py, transformers CLIPTokenizer).
CLIP_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
                r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
# Stand-in for Python's `re` (no \p classes): letters = word characters minus digits and "_".
# It differs from \p{L}/\p{N} only on rare characters (e.g. superscript digits count as letters).
_FALLBACK_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
                     r"|[^\W\d_]+|\d|(?:[^\s\w]|_)+")


def _compile_pattern() -> re.Pattern:
    # OpenAI's CLIP adds IGNORECASE; transformers does not. The text is lowercase already, so it
    # only matters for rare characters that case-fold to letters (e.g. U+0345): we follow transformers.
    if HAS_REGEX:
        return _regex.compile(CLIP_PATTERN)
    return re.compile(_FALLBACK_PATTERN)


def words_outside(text: str, known_words: Iterable[str]) -> list[str]:
    """The words of ``text`` (after the tokenizer's cleanup: lowercase, NFC) that are not in
    ``known_words``, in order of appearance, each once. A word is a run of letters, digits and
    apostrophes, so "Красный" and "sunset" are words and punctuation is not.
    Supports notebook 04_clip_text_embeddings.
    """
    known = {clean_text(w) for w in known_words}
    pattern = r"[\p{L}\p{N}']+" if HAS_REGEX else r"[^\W_]+(?:'[^\W_]+)*"
    found = (_regex if HAS_REGEX else re).findall(pattern, clean_text(text))
    return list(dict.fromkeys(w for w in found if w.strip("'") and w not in known))


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The map from each of the 256 byte values to a printable Unicode character.

    Printable Latin-1 bytes map to themselves; the others (control characters, space, ...) are
    shifted to code points from 256 upward, so that a BPE symbol is never whitespace or a control
    character. Same table as GPT-2 and CLIP. Defined in notebook 04_clip_text_embeddings.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    shift = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + shift)
            shift += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def base_vocabulary() -> list[str]:
    """CLIP's first 512 tokens: the 256 byte symbols, then the same with ``</w>`` appended.

    Every vocabulary this module trains starts with them, so any text can be encoded.
    Supports notebook 04_clip_text_embeddings.
    """
    symbols = list(bytes_to_unicode().values())
    return symbols + [s + END_OF_WORD for s in symbols]


def clean_text(text: str, html_unescape: bool = False) -> str:
    """CLIP's text cleanup without ``ftfy``: HTML unescape, NFC, whitespace collapse, lowercase.

    Whitespace is Unicode's (with ``regex``) and lowercasing goes character by character, both as in
    transformers' ``CLIPTokenizer``.

    By default the cleanup is transformers' ``CLIPTokenizer``'s (what Stable Diffusion's pipelines
    use): NFC, whitespace, lowercase, and no HTML unescaping, so "&amp;" stays as it is (the tests
    compare ids on escaped, Unicode and whitespace-laden text). ``html_unescape=True`` follows
    OpenAI's CLIP instead ("&amp;amp;" becomes "&").
    Supports notebook 04_clip_text_embeddings.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}; pass one prompt at a time "
                        "or call the tokenizer on a list of prompts")
    if html_unescape:
        text = html.unescape(html.unescape(text))
    text = unicodedata.normalize("NFC", text)
    text = (_regex if HAS_REGEX else re).sub(r"\s+", " ", text).strip(" ")
    # Lowercase character by character, as transformers does (no Greek final-sigma rule).
    return text.lower() if text.isascii() else "".join(ch.lower() for ch in text)


def pre_tokenize(text: str, html_unescape: bool = False) -> list[str]:
    """Clean ``text`` and split it into CLIP's pieces, each as byte symbols (before BPE).

    Supports notebook 04_clip_text_embeddings.
    """
    byte_encoder = bytes_to_unicode()
    pieces = _pattern().findall(clean_text(text, html_unescape))
    return [p if p in (BOS_TOKEN, EOS_TOKEN) else "".join(byte_encoder[b] for b in p.encode("utf-8"))
            for p in pieces]


@lru_cache(maxsize=1)
def _pattern() -> re.Pattern:
    return _compile_pattern()


def _word_symbols(piece: str) -> tuple[str, ...]:
    """A piece as its initial BPE symbols: one per byte, the last one marked with ``</w>``."""
    return tuple(piece[:-1]) + (piece[-1] + END_OF_WORD,)


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every occurrence of ``pair`` in ``symbols``, left to right, by its merge."""
    first, second = pair
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
            out.append(first + second)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def train_bpe(texts: Iterable[str], vocab_size: int | None = None, num_merges: int | None = None,
              min_frequency: int = 2,
              html_unescape: bool = False) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn CLIP-style BPE merges from ``texts``; return ``(vocab, merges)``.

    Give either ``vocab_size`` (total size: 512 byte symbols + merges + 2 special tokens) or
    ``num_merges``. Training stops early when no pair occurs ``min_frequency`` times. At each step
    the most frequent adjacent pair of symbols (counted over all pieces, weighted by how often the
    piece occurs) is merged; ties go to the alphabetically first pair, so training is
    deterministic. The vocabulary is laid out as CLIP's: bytes, bytes + ``</w>``, merges, then
    ``<|startoftext|>`` and ``<|endoftext|>`` (the highest id). Defined in notebook
    04_clip_text_embeddings.
    """
    base = base_vocabulary()
    if (vocab_size is None) == (num_merges is None):
        raise ValueError("give exactly one of vocab_size (e.g. 1000) or num_merges (e.g. 400)")
    if vocab_size is not None:
        if vocab_size < len(base) + 2:
            raise ValueError(f"vocab_size={vocab_size} is too small: the {len(base)} byte symbols and 2 "
                             f"special tokens alone need {len(base) + 2}; use at least that")
        num_merges = vocab_size - len(base) - 2
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    if isinstance(texts, str):
        raise TypeError("texts must be a list (or other iterable) of strings, not one string; "
                        "wrap it: train_bpe([text], ...)")

    piece_counts: Counter[str] = Counter()
    for text in texts:
        piece_counts.update(p for p in pre_tokenize(text, html_unescape) if p not in (BOS_TOKEN, EOS_TOKEN))
    words = [list(_word_symbols(p)) for p in piece_counts]
    freqs = list(piece_counts.values())

    # Pair counts and, for each pair, the words it occurs in; updated after each merge.
    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for w, (symbols, f) in enumerate(zip(words, freqs, strict=True)):
        for pair in zip(symbols, symbols[1:], strict=False):
            pair_counts[pair] += f
            where[pair].add(w)

    vocab_list = list(base)
    known = set(vocab_list)
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges and pair_counts:
        best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        if pair_counts[best] < min_frequency:
            break
        merges.append(best)
        merged = best[0] + best[1]
        if merged not in known:  # two different merges can spell the same token
            known.add(merged)
            vocab_list.append(merged)
        for w in list(where.pop(best, ())):
            old, f = words[w], freqs[w]
            new = list(_merge_pair(tuple(old), best))
            for pair in zip(old, old[1:], strict=False):
                pair_counts[pair] -= f
                if pair_counts[pair] <= 0:
                    del pair_counts[pair]
            for pair in zip(old, old[1:], strict=False):
                where[pair].discard(w)
            for pair in zip(new, new[1:], strict=False):
                pair_counts[pair] += f
                where[pair].add(w)
            words[w] = new
        pair_counts.pop(best, None)
    vocab_list += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(vocab_list)}, merges
