"""A byte-level BPE tokenizer in CLIP's manner. Defined in notebook 04_clip_text_embeddings.

The pipeline, step by step, as in OpenAI's ``simple_tokenizer.py`` and in transformers'
``CLIPTokenizer``:

1. clean the text: Unicode NFC, collapse every run of whitespace into one space, strip, lowercase
   (as transformers' ``CLIPTokenizer``; ``html_unescape=True`` also undoes HTML escapes, as OpenAI's
   CLIP does);
2. pre-tokenize with CLIP's regex: words of letters, single digits, runs of punctuation and the
   English contractions ``'s 't 're 've 'm 'll 'd`` become separate pieces;
3. map each piece's UTF-8 bytes to printable characters (``bytes_to_unicode``), so that *any* text
   can be tokenized and no character is ever unknown;
4. mark the end of the piece on its last symbol (``</w>``) and apply the learned merges, lowest
   rank first (byte-pair encoding);
5. wrap in ``<|startoftext|>`` ... ``<|endoftext|>``, truncate to the context (77 in CLIP and SD),
   and pad (SD v1 pads with ``<|endoftext|>``, SD 2 with ``!``).

``save`` writes ``vocab.json`` + ``merges.txt`` exactly as transformers' ``CLIPTokenizer`` reads
them, so one folder serves both tokenizers (the tests show identical ids).

Steps 1 to 4 and the training of the merges (``train_bpe``) are in ``bpe``; this module holds the
tokenizer itself (``CLIPStyleTokenizer``: step 5, padding, truncation warnings, files) and the
unknown-word warning. The public names of ``bpe`` are importable from here too.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from course_lib.models.bpe import (
    BOS_TOKEN,
    CLIP_PATTERN,
    END_OF_WORD,
    EOS_TOKEN,
    _merge_pair,
    _word_symbols,
    base_vocabulary,
    bytes_to_unicode,
    clean_text,
    pre_tokenize,
    train_bpe,
    words_outside,
)

__all__ = ["BOS_TOKEN", "EOS_TOKEN", "END_OF_WORD", "CLIP_PATTERN", "TRUNCATION_WORDS_SHOWN",
           "TRUNCATION_CHARS_SHOWN", "MERGES_HEADER", "PromptTruncatedWarning", "UnknownWordsWarning",
           "words_outside", "warn_unknown_words", "bytes_to_unicode", "base_vocabulary", "clean_text",
           "pre_tokenize", "train_bpe", "CLIPStyleTokenizer"]

TRUNCATION_WORDS_SHOWN = 5   # a truncation warning names this many dropped words at most
TRUNCATION_CHARS_SHOWN = 60  # ... and at most this many characters of them
MERGES_HEADER = "#version: 0.2"


class PromptTruncatedWarning(UserWarning):
    """Warned when a prompt is longer than the context and its tail is dropped.

    Supports notebook 04_clip_text_embeddings.
    """


class UnknownWordsWarning(UserWarning):
    """Warned when a prompt has words a model never saw in training (its output is then a guess).

    Supports notebook 04_clip_text_embeddings.
    """


def warn_unknown_words(text: str, known_words: Iterable[str], model: str = "the model") -> list[str]:
    """Warn an ``UnknownWordsWarning`` naming the words of ``text`` outside ``known_words`` (the
    words ``model`` was trained on); return them. A text model maps any text to some vector, so such
    a prompt runs, but what it draws is not what the words say. Supports notebook 04_clip_text_embeddings.
    """
    unknown = words_outside(text, known_words)
    if unknown:
        more = f" and {len(unknown) - 12} more" if len(unknown) > 12 else ""
        shown = ", ".join(repr(w) for w in unknown[:12]) + more
        quoted = repr(text)  # a long prompt is named by its start
        if len(text) > TRUNCATION_CHARS_SHOWN:
            quoted = f"{text[:TRUNCATION_CHARS_SHOWN].rstrip()!r} ..."
        warnings.warn(f"the prompt {quoted} has words {model} never saw in training: {shown}; it will still "
                      "draw something, but not what these words say", UnknownWordsWarning, stacklevel=2)
    return unknown


class CLIPStyleTokenizer:
    """CLIP's byte-level BPE tokenizer, from a vocabulary and a list of merges.

    ``tok.encode(text)`` gives ids with start and end tokens; ``tok(texts)`` gives a
    ``(B, context_length)`` LongTensor padded and truncated as Stable Diffusion does.
    ``pad_token`` is only used for padding. (transformers, given ``pad_token="!"`` as in SD 2's
    folder, also turns every "!" *in the text* into that special token; OpenCLIP, which SD 2's
    encoder was trained with, and this class do not.) Defined in notebook 04_clip_text_embeddings.
    """

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], context_length: int = 77,
                 pad_token: str = EOS_TOKEN, html_unescape: bool = False):
        if not isinstance(vocab, dict) or not vocab:
            raise TypeError("vocab must be a non-empty dict {token: id}; get one from train_bpe(...) "
                            "or CLIPStyleTokenizer.from_folder(folder)")
        missing = [t for t in base_vocabulary() + [BOS_TOKEN, EOS_TOKEN, pad_token] if t not in vocab]
        if missing:
            raise ValueError(f"vocab lacks {len(missing)} required tokens (e.g. {missing[:3]}): a CLIP-style "
                             "vocabulary holds all 256 byte symbols, their '</w>' forms, the start/end "
                             "tokens and the pad token; build it with train_bpe(...)")
        if len(set(vocab.values())) != len(vocab):
            raise ValueError("vocab maps two tokens to the same id; ids must be unique")
        if not isinstance(context_length, int) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2 (start + end token), "
                             f"got {context_length!r}")
        merges = [tuple(m) for m in merges]
        bad = [m for m in merges if len(m) != 2 or m[0] + m[1] not in vocab]
        if bad:
            raise ValueError(f"{len(bad)} merges are malformed or make tokens missing from vocab "
                             f"(e.g. {bad[:3]}); vocab and merges must come from the same training run")
        self.encoder = dict(vocab)
        self.decoder = {i: t for t, i in vocab.items()}
        self.merges = merges
        self.bpe_ranks = {m: r for r, m in enumerate(merges)}
        self.context_length = context_length
        self.pad_token = pad_token
        self.html_unescape = html_unescape
        self.byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        self._cache: dict[str, tuple[str, ...]] = {}

    # ids of the special tokens
    @property
    def bos_token_id(self) -> int:
        return self.encoder[BOS_TOKEN]

    @property
    def eos_token_id(self) -> int:
        return self.encoder[EOS_TOKEN]

    @property
    def pad_token_id(self) -> int:
        return self.encoder[self.pad_token]

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def __len__(self) -> int:
        return len(self.encoder)

    def bpe(self, piece: str) -> tuple[str, ...]:
        """Apply the merges to one pre-tokenized piece (byte symbols), lowest rank first."""
        if piece in self._cache:
            return self._cache[piece]
        symbols = _word_symbols(piece)
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:], strict=False))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            symbols = _merge_pair(symbols, best)
        if len(self._cache) < 100_000:
            self._cache[piece] = symbols
        return symbols

    def tokenize(self, text: str) -> list[str]:
        """The BPE tokens of ``text`` as strings, without start/end tokens (``"red</w>"``...)."""
        tokens: list[str] = []
        for piece in pre_tokenize(text, self.html_unescape):
            tokens.extend([piece] if piece in (BOS_TOKEN, EOS_TOKEN) else self.bpe(piece))
        return tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text, with start and end tokens; no padding and no truncation."""
        ids = [self.encoder[t] for t in self.tokenize(text)]
        return [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids

    def __call__(self, texts: str | Sequence[str], padding: str | bool = "max_length",
                 truncation: bool = True,
                 return_attention_mask: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Tokenize a batch into a ``(B, L)`` LongTensor (and a ``(B, L)`` attention mask if asked).

        ``padding``: ``"max_length"`` pads to ``context_length`` (as SD does), ``"longest"`` to the
        longest prompt of the batch, ``False`` requires equal lengths. ``truncation=True`` keeps
        the first ``context_length - 2`` tokens plus the end token and warns a
        ``PromptTruncatedWarning``, one short line per distinct prompt cut, with the counts and the
        first dropped words. The mask is 1 on real tokens (start and end included) and 0 on padding.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a str or a list of str")
        if not texts:
            raise ValueError("texts is empty; pass at least one prompt")
        if padding is True:
            padding = "longest"
        if padding not in ("max_length", "longest", False, "do_not_pad"):
            raise ValueError(f"padding must be 'max_length', 'longest' or False, got {padding!r}")
        n = self.context_length
        rows: list[list[int]] = []
        too_long: dict[str, tuple[int, list[str], list[int]]] = {}  # each text once, at its first index
        for i, text in enumerate(texts):
            tokens = self.tokenize(text)
            ids = [self.encoder[t] for t in tokens]
            if len(ids) > n - 2:
                if not truncation:
                    raise ValueError(f"prompt {i} has {len(ids) + 2} tokens with start and end, more than "
                                     f"the context of {n}; shorten it or pass truncation=True")
                too_long.setdefault(text, (i, tokens, ids))
                ids = ids[:n - 2]
            rows.append([self.bos_token_id, *ids, self.eos_token_id])
        for i, tokens, ids in too_long.values():  # one line each; the index only where several are cut
            warnings.warn(self._truncation_message(i if len(too_long) > 1 else None, tokens, ids),
                          PromptTruncatedWarning, stacklevel=2)
        length = n if padding == "max_length" else max(len(r) for r in rows)
        if padding in (False, "do_not_pad") and len({len(r) for r in rows}) > 1:
            raise ValueError("prompts have different lengths and padding=False; use padding='max_length' "
                             "or 'longest' to batch them")
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[b, :len(row)] = 1
        return (ids, mask) if return_attention_mask else ids

    def _truncation_message(self, index: int | None, tokens: list[str], ids: list[int]) -> str:
        """One short line: the counts, and the first few dropped words (whole words: a word cut in the
        middle is named from its start). ``index``: the prompt's place in a batch, None for one prompt."""
        cut = self.context_length - 2
        start = cut  # back up to the start of the word that the cut falls in
        while start > 0 and not tokens[start - 1].endswith(END_OF_WORD) and tokens[start - 1] not in (
                BOS_TOKEN, EOS_TOKEN):
            start -= 1
        words = self.decode(ids[start:]).split()
        shown = " ".join(words[:TRUNCATION_WORDS_SHOWN])
        if len(shown) > TRUNCATION_CHARS_SHOWN:
            shown = shown[:TRUNCATION_CHARS_SHOWN].rstrip()
        if shown != " ".join(words):
            shown += " ..."
        which = "prompt" if index is None else f"prompt {index}"
        message = (f"{which} has {len(ids) + 2} tokens; the text encoder reads {self.context_length}: "
                   f"dropped {len(ids) - cut} tokens starting {shown!r}")
        if start < cut and words:
            message += f" ({words[0]!r} is cut after its first {cut - start} token(s))"
        return message

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids; ``</w>`` becomes a space (so pieces come back space-separated)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() > 1:
                raise ValueError(f"decode takes one sequence (1-D), got shape {tuple(ids.shape)}; "
                                 "use decode_batch for a batch")
            ids = ids.tolist()
        specials = {self.bos_token_id, self.eos_token_id, self.pad_token_id}
        unknown = [i for i in ids if i not in self.decoder]
        if unknown:
            raise ValueError(f"ids {unknown[:5]} are not in this vocabulary of {len(self)} tokens")
        text = "".join(self.decoder[i] for i in ids if not (skip_special_tokens and i in specials))
        raw = bytearray()
        for ch in text:  # byte symbols back to bytes; characters outside the table (specials) as UTF-8
            raw += bytes([self.byte_decoder[ch]]) if ch in self.byte_decoder else ch.encode("utf-8")
        return raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def decode_batch(self, ids: torch.Tensor | Sequence[Sequence[int]],
                     skip_special_tokens: bool = True) -> list[str]:
        """``decode`` for each row of a batch."""
        return [self.decode(row, skip_special_tokens) for row in ids]

    def save(self, folder: str | Path) -> Path:
        """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` into ``folder``.

        The format is the one transformers' ``CLIPTokenizer.from_pretrained(folder)`` reads
        (the config tells it the context length and the pad token).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(self.encoder, ensure_ascii=False), encoding="utf-8")
        lines = [MERGES_HEADER] + [f"{a} {b}" for a, b in self.merges]
        (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": self.context_length,
                  "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
                  "pad_token": self.pad_token, "do_lower_case": True, "add_prefix_space": False,
                  "errors": "replace"}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def from_folder(cls, folder: str | Path, context_length: int | None = None, pad_token: str | None = None,
                    html_unescape: bool = False) -> CLIPStyleTokenizer:
        """Load ``vocab.json`` + ``merges.txt`` (ours, or a Stable Diffusion ``tokenizer/`` folder).

        ``context_length`` and ``pad_token`` default to those in ``tokenizer_config.json`` when it
        is there, else 77 and ``<|endoftext|>``.
        """
        folder = Path(folder)
        for name in ("vocab.json", "merges.txt"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} not found; a tokenizer folder holds vocab.json and "
                                        "merges.txt (write one with tokenizer.save(folder))")
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        merges = []
        for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines():
            if line.startswith("#version") or not line.strip():
                continue
            merges.append(tuple(line.split(" ")))
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        if context_length is None:
            length = config.get("model_max_length", 77)
            context_length = length if isinstance(length, int) and length < 100_000 else 77
        if pad_token is None:
            pad = config.get("pad_token", EOS_TOKEN)
            pad_token = pad["content"] if isinstance(pad, dict) else pad
        return cls(vocab, merges, context_length=context_length, pad_token=pad_token,
                   html_unescape=html_unescape)

    def __repr__(self) -> str:
        return (f"CLIPStyleTokenizer(vocab_size={len(self)}, merges={len(self.merges)}, "
                f"context_length={self.context_length}, pad_token={self.pad_token!r})")
