"""The course's CLIP-style BPE tokenizer against transformers' CLIPTokenizer on the same files.

A vocabulary is trained here on a small caption corpus, saved, and loaded by both tokenizers;
ids must be identical (padding to 77, truncation included).
"""

import json
import random
import unicodedata
import warnings
from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

import course_lib.models.bpe as tokmod
from course_lib.models.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    CLIPStyleTokenizer,
    PromptTruncatedWarning,
    base_vocabulary,
    bytes_to_unicode,
    clean_text,
    train_bpe,
)

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
RELATIONS = ["above", "below", "to the left of", "to the right of"]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A photograph of an astronaut riding a horse, highly detailed!",
    "Don't panic: it's only 42 shapes, isn't it?",
    "Собака ест сосиску на пляже.",
    "a cat 🐱 and a dog 🐶 on a sunny day",
]


SHIPPED_TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "tokenizer"


def SHIPPED_HF():  # noqa: N802 - a cached constant
    """transformers' CLIPTokenizer on the shipped vocab.json + merges.txt."""
    global _SHIPPED_HF
    if _SHIPPED_HF is None:
        _SHIPPED_HF = CLIPTokenizer.from_pretrained(str(SHIPPED_TOKENIZER))
    return _SHIPPED_HF


_SHIPPED_HF = None


def caption_corpus() -> list[str]:
    captions = [f"a {c1} {s1} {r} a {c2} {s2}" for c1 in COLOURS for s1 in SHAPES for r in RELATIONS
                for c2 in COLOURS[:3] for s2 in SHAPES[:2]]
    captions += [f"two {c} {s}s" for c in COLOURS for s in SHAPES]
    return captions + SENTENCES * 3


PROMPTS = [
    "a red circle above a blue square",
    "A RED Circle ABOVE a blue SQUARE",
    "  a   red,circle!!  above...a\tblue\n\nsquare  ",
    "Собака, которая ест сосиску на пляже в закатное время",  # long in bytes: gets truncated
    "a dog 🐶, a cat 🐱 and a thumbs-up 👍🏽 — «quoted» ½ ² ①",
    "don't you're we'll I'd it's 1234 3.14 x_y-z",
    "naïve café ﬁ İstanbul ΣΑΣ ß",
    "an unseen word: xylophone, zygomorphic quokka",
    "a red circle above a blue square " * 12,  # far longer than 77 tokens
    "",
]


@pytest.fixture(scope="module")
def trained():
    vocab, merges = train_bpe(caption_corpus(), vocab_size=700)
    return vocab, merges


@pytest.fixture(scope="module")
def folder(trained, tmp_path_factory):
    vocab, merges = trained
    return CLIPStyleTokenizer(vocab, merges).save(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def ours(folder):
    return CLIPStyleTokenizer.from_folder(folder)


@pytest.fixture(scope="module")
def hf(folder):
    return CLIPTokenizer.from_pretrained(str(folder))


def hf_ids(hf, prompts, length=77):
    return hf(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")


# ------------------------------------------------------------------------------------- training
def test_vocabulary_layout_is_clips(trained):
    vocab, merges = trained
    ids = sorted(vocab.values())
    assert ids == list(range(len(vocab)))
    tokens = sorted(vocab, key=vocab.get)
    assert tokens[:512] == base_vocabulary()  # 256 byte symbols, then the same with </w>
    assert tokens[0] == "!" and tokens[256] == "!</w>"  # CLIP's order: printable bytes first
    assert tokens[-2:] == [BOS_TOKEN, EOS_TOKEN]  # the end token has the highest id
    assert len(vocab) <= 700 and len(merges) > 50
    assert all(a + b in vocab for a, b in merges)
    for word in ["circle</w>", "square</w>", "triangle</w>", "above</w>"]:  # frequent words: one token
        assert word in vocab


def test_training_is_deterministic_and_respects_sizes():
    corpus = caption_corpus()
    assert train_bpe(corpus, num_merges=40) == train_bpe(corpus, num_merges=40)
    vocab, merges = train_bpe(corpus, num_merges=40)
    assert len(merges) == 40 and len(vocab) == 512 + 40 + 2
    vocab, merges = train_bpe(corpus, vocab_size=520)
    assert len(vocab) == 520
    with pytest.raises(ValueError, match="exactly one"):
        train_bpe(corpus, vocab_size=600, num_merges=10)
    with pytest.raises(ValueError, match="too small"):
        train_bpe(corpus, vocab_size=300)
    with pytest.raises(TypeError, match="list"):
        train_bpe("one string", num_merges=3)


def test_bytes_to_unicode_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ"


# ------------------------------------------------------------------------------------- parity
def test_saved_files_have_transformers_format(folder, ours):
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version")
    assert all(len(line.split(" ")) == 2 for line in lines[1:])
    assert len(lines) - 1 == len(ours.merges)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == ours.encoder


def test_transformers_reads_our_folder(hf, ours):
    assert hf.model_max_length == 77
    assert len(hf) == len(ours)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (ours.bos_token_id, ours.eos_token_id,
                                                                   ours.pad_token_id)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_identical_to_transformers(ours, hf, prompt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        mine = ours([prompt])
    ref = hf_ids(hf, [prompt])["input_ids"]
    assert mine.dtype == torch.long and mine.shape == (1, 77)
    assert torch.equal(mine, ref)
    assert ours.encode(prompt) == hf.encode(prompt)  # no padding, no truncation


def test_batch_padding_and_attention_mask_match_transformers(ours, hf):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        ids, mask = ours(PROMPTS, return_attention_mask=True)
        longest, longest_mask = ours(PROMPTS[:3], padding="longest", return_attention_mask=True)
    ref = hf_ids(hf, PROMPTS)
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
    ref = hf(PROMPTS[:3], padding="longest", return_tensors="pt")
    assert torch.equal(longest, ref["input_ids"]) and torch.equal(longest_mask, ref["attention_mask"])
    assert (ids[:, 0] == ours.bos_token_id).all() and (ids[-1, 2:] == ours.eos_token_id).all()


def test_random_unicode_matches_transformers(ours, hf):
    # Assigned code points from many scripts, emoji, symbols, control and odd whitespace characters.
    rng = random.Random(0)
    ranges = [(0, 0x80), (0x80, 0x800), (0x2000, 0x2070), (0x3000, 0x3100), (0x1F300, 0x1F700), (0, 0x11000)]
    for _ in range(400):
        chars = []
        for _ in range(rng.randint(1, 16)):
            c = chr(rng.randrange(*rng.choice(ranges)))
            if unicodedata.category(c) in ("Cs", "Cn"):  # surrogates; unassigned (Unicode versions differ)
                c = "a"
            chars.append(c + (" " if rng.random() < 0.3 else ""))
        text = "".join(chars).replace("<|", "<")
        assert ours.encode(text) == hf.encode(text), repr(text)


def test_custom_context_length_and_pad_token_round_trip(trained, tmp_path):
    vocab, merges = trained
    tok = CLIPStyleTokenizer(vocab, merges, context_length=16, pad_token="!")  # SD 2 pads with "!"
    tok.save(tmp_path)
    again = CLIPStyleTokenizer.from_folder(tmp_path)
    assert (again.context_length, again.pad_token, again.pad_token_id) == (16, "!", 0)
    hf = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert hf.model_max_length == 16 and hf.pad_token_id == 0
    prompts = ["a red circle", "a blue square below a green star"]
    ids = again(prompts)
    assert ids.shape == (2, 16) and (ids[0, 5:] == 0).all()
    ref = hf(prompts, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, ref)


# ------------------------------------------------------------------------------------- truncation
def test_truncation_warns_and_names_the_dropped_words(ours):
    prompt = "a " * 74 + "xylophone purple elephant"  # the cut falls inside "xylophone"
    assert len(ours.tokenize("xylophone")) > 1
    with pytest.warns(PromptTruncatedWarning) as record:
        ids = ours([prompt])
    message = str(record[0].message)
    assert "xylophone purple elephant" in message and "cut" in message
    assert ids.shape == (1, 77) and ids[0, -1] == ours.eos_token_id
    kept = ours.decode(ids[0])
    assert kept.startswith("a a a") and "purple" not in kept

    with pytest.warns(PromptTruncatedWarning, match="'elephant'"):  # whole words dropped
        ours(["a " * 75 + "elephant"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(["a " * 75])  # exactly 77 tokens: no warning
    with pytest.raises(ValueError, match="truncation=True"):
        ours([prompt], truncation=False)


# ------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("prompt", PROMPTS)
def test_decode_matches_transformers_and_round_trips(ours, hf, prompt):
    ids = ours.encode(prompt)
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids)
    assert ours.encode(ours.decode(ids)) == ids  # decoding then encoding gives the same ids


def test_decode_gives_back_a_clean_caption(ours):
    for caption in caption_corpus()[:50]:
        assert ours.decode(ours.encode(caption)) == caption
    batch = ours(["a red circle", "two blue stars"])
    assert ours.decode_batch(batch) == ["a red circle", "two blue stars"]


# ------------------------------------------------------------------------------------- cleanup
CLEANUP_CASES = ["salt &amp; pepper", "Tom &amp;amp; Jerry &lt;3 &#39;x&#39;", "a &quot;red&quot; circle",
                 "a red\u00a0circle", "  a\tred \n circle  ", "Красный круг над синим квадратом",
                 "CAFÉ e\u0301 Ångström", "ΣΑΣ İstanbul", "a\u2003b\u200bc x\u0085y", "\ufeffred a\u3000b",
                 "ﬁ ligature ²³ 12", "😀 emoji", "don't RED's", "a_b-c", "\u3000\t\n", ""]


@pytest.mark.parametrize("text", CLEANUP_CASES)
def test_cleanup_matches_transformers_on_escaped_unicode_and_whitespace(ours, hf, text):
    """The default cleanup is transformers' CLIPTokenizer's: no HTML unescaping ("&amp;" stays)."""
    assert ours.encode(text) == hf(text).input_ids
    assert CLIPStyleTokenizer.from_folder(SHIPPED_TOKENIZER).encode(text) == SHIPPED_HF()(text).input_ids


def test_html_unescape_is_openai_clips_option(ours, folder):
    assert clean_text("  Tom &amp;amp; Jerry\u00a0&lt;3 ") == "tom &amp;amp; jerry &lt;3"
    assert clean_text("  Tom &amp;amp; Jerry\u00a0&lt;3 ", html_unescape=True) == "tom & jerry <3"
    openai = CLIPStyleTokenizer.from_folder(folder, html_unescape=True)
    assert openai.encode("salt &amp; pepper") == openai.encode("salt & pepper") != ours.encode("salt &amp; pepper")


def test_words_outside_a_vocabulary_are_warned_by_name():
    from course_lib.models.tokenizer import UnknownWordsWarning, warn_unknown_words, words_outside
    from course_lib.worlds.shapeworld import caption_words

    words = caption_words()
    assert words_outside("A red circle above a BLUE square", words) == []
    assert words_outside("two green crosses in the top left", words) == []
    russian = "Заяц жонглирует мячами"                     # the article's kind of prompt
    assert words_outside(russian, words) == ["заяц", "жонглирует", "мячами"]
    assert words_outside("a red dog, a red dog!", words) == ["dog"]
    with pytest.warns(UnknownWordsWarning, match="never saw in training: 'заяц', 'жонглирует', 'мячами'"):
        assert warn_unknown_words(russian, words, "the ShapeWorld model") == ["заяц", "жонглирует", "мячами"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_unknown_words("a small red circle in the center", words) == []


def test_every_byte_is_in_the_vocabulary(ours):
    text = "".join(chr(i) for i in range(1, 256)) + "\x00 \U0001F600 \u4e2d\u6587"
    ids = ours.encode(text)
    assert ours.encode(ours.decode(ids)) == ids


def test_fallback_without_regex_agrees_on_ordinary_prompts(ours, monkeypatch):
    expected = [ours.encode(p) for p in PROMPTS]
    monkeypatch.setattr(tokmod, "HAS_REGEX", False)
    tokmod._pattern.cache_clear()
    try:
        fallback = CLIPStyleTokenizer(ours.encoder, ours.merges)
        assert [fallback.encode(p) for p in PROMPTS] == expected
    finally:
        monkeypatch.undo()
        tokmod._pattern.cache_clear()


def test_bad_inputs_raise_clear_errors(trained, tmp_path):
    vocab, merges = trained
    with pytest.raises(ValueError, match="byte symbols"):
        CLIPStyleTokenizer({"a": 0, BOS_TOKEN: 1, EOS_TOKEN: 2}, [])
    with pytest.raises(ValueError, match="merges"):
        CLIPStyleTokenizer(vocab, [("zz", "qq")])
    with pytest.raises(ValueError, match="context_length"):
        CLIPStyleTokenizer(vocab, merges, context_length=1)
    tok = CLIPStyleTokenizer(vocab, merges)
    with pytest.raises(TypeError, match="str"):
        tok([1, 2])
    with pytest.raises(ValueError, match="padding"):
        tok(["a"], padding="everything")
    with pytest.raises(ValueError, match="padding=False"):
        tok(["a", "a red circle"], padding=False)
    with pytest.raises(ValueError, match="not in this vocabulary"):
        tok.decode([10**6])
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPStyleTokenizer.from_folder(tmp_path)
