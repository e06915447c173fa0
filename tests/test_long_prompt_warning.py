"""A prompt longer than the text encoder's context is warned in one short line: the counts and the first
dropped words, never the whole text (a 300-word prompt once printed a 1,500-character warning)."""

from __future__ import annotations

import re

import pytest

from course_lib.models.tokenizer import PromptTruncatedWarning, UnknownWordsWarning, warn_unknown_words
from course_lib.train.clip import load_shipped_tokenizer

WORDS = "blue circle left of a red square above two green triangles".split()
LONG_PROMPT = " ".join(WORDS[i % len(WORDS)] for i in range(300))  # 300 ShapeWorld words, one token each


@pytest.fixture(scope="module")
def tok():
    return load_shipped_tokenizer()


def test_a_300_word_prompt_is_warned_in_one_short_line(tok):
    with pytest.warns(PromptTruncatedWarning) as record:
        ids = tok(LONG_PROMPT)
    assert len(record) == 1 and ids.shape == (1, 77)
    message = str(record[0].message)
    total = len(tok.encode(LONG_PROMPT))
    assert total == 302  # 300 words and the start and end tokens
    assert len(message) < 200 and "\n" not in message, message
    assert message.startswith(f"prompt has {total} tokens; the text encoder reads 77: dropped {total - 77} tokens")
    first_dropped = tok.decode(tok.encode(LONG_PROMPT)[76:-1]).split()[:3]
    assert re.search(r"starting '" + " ".join(first_dropped) + r" [^']* \.\.\.'$", message), message


def test_a_batch_warns_each_cut_prompt_once_and_names_a_cut_word(tok):
    cut_word = "a " * 74 + "xylophone purple elephant"
    with pytest.warns(PromptTruncatedWarning) as record:  # e.g. the pipeline's batch: 2 images, no negative
        tok([LONG_PROMPT, LONG_PROMPT, "", ""])
    assert len(record) == 1 and str(record[0].message).startswith("prompt has 302 tokens")
    with pytest.warns(PromptTruncatedWarning) as record:
        tok(["a red circle", LONG_PROMPT, cut_word, cut_word])
    messages = [str(w.message) for w in record]
    assert len(messages) == 2 and messages[0].startswith("prompt 1 has 302 tokens")
    assert messages[1].startswith("prompt 2 has 92 tokens; the text encoder reads 77: dropped 15 tokens")
    assert "starting 'xylophone purple elephant'" in messages[1] and "'xylophone' is cut after" in messages[1]


def test_unknown_words_name_a_long_prompt_by_its_start():
    prompt = "a zebra " + "red circle " * 150
    with pytest.warns(UnknownWordsWarning) as record:
        warn_unknown_words(prompt, {"a", "red", "circle"}, "the ShapeWorld model")
    message = str(record[0].message)
    assert len(message) < 250 and "'zebra'" in message and message.startswith("the prompt 'a zebra red circle")


def test_the_command_line_warns_a_300_word_prompt_in_short_lines(tmp_path, capsys):
    from course_lib.generate import main

    assert main([LONG_PROMPT, "--steps", "1", "--num-images", "2", "--out", str(tmp_path / "out.png")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert lines, "the truncation is warned"
    assert all(len(line) < 200 for line in lines), lines
    assert len(lines) == 1 and lines[0].startswith(
        "warning: prompt has 302 tokens; the text encoder reads 77: dropped 225 tokens starting"), lines
