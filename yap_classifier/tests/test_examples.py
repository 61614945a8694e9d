"""Reading JSONL example files: lenient where the meaning is clear, clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from yap_classifier.examples import DataError, Example, read_examples


def test_blank_lines_missing_and_odd_history(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text(
        '{"utterance": "a", "label": 1}\n\n   \n'
        '{"history": null, "utterance": "b", "label": false}\n'
        '{"history": "one turn", "utterance": "c", "label": "1"}\n'
        '{"history": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "x"}], "utterance": "d", "label": 0}\n'
    )
    assert read_examples(f) == [
        Example(history=[], utterance="a", label=1),
        Example(history=[], utterance="b", label=0),
        Example(history=["one turn"], utterance="c", label=1),
        Example(history=["u"], utterance="d", label=0),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"label": 1}', "utterance"),
        ('{"utterance": "x", "label": 2}', "label must be 0 or 1"),
        ('{"utterance": "x", "history": [3], "label": 1}', "history"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"utterance": "ok", "label": 0}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"d.jsonl:2: .*{message}"):
        read_examples(f)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        read_examples(f)
