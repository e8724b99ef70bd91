"""Figure-5-style pages: test sentences with each word coloured by the weight NGSLL gave it.

Red = positive weight for the answered class, blue = negative, colour strength = |weight| relative to
the largest on the page; grey = the word is not a feature of z (a stopword, a rare word, punctuation);
plain = a feature the gate did not choose. Hovering a word shows its weight.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from ngsll.text import word_spans


@dataclass
class ExplainedSentence:
    """One test sentence and, per model (e.g. ``NGSLL K=5``), the answered class and the chosen words' weights."""

    text: str
    label: str
    answers: dict[str, tuple[str, dict[str, float]]] = field(default_factory=dict)


def _word_style(weight: float, scale: float) -> str:
    strength = min(abs(weight) / scale, 1.0) if scale > 0 else 0.0
    red, blue = (220, 30, 30), (30, 80, 220)
    rgb = red if weight > 0 else blue
    return f"background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{0.15 + 0.75 * strength:.2f});font-weight:bold"


def coloured_sentence(text: str, weights: dict[str, float], vocabulary: set[str] | dict[str, int], scale: float) -> str:
    """HTML of ``text`` with chosen words coloured by ``weights`` and out-of-vocabulary words greyed."""
    pieces = []
    for piece, token in word_spans(text):
        escaped = html.escape(piece)
        if token is None:
            pieces.append(escaped)
        elif token in weights:
            pieces.append(f"<span style='{_word_style(weights[token], scale)}' "
                          f"title='{html.escape(token)}: {weights[token]:+.3f}'>{escaped}</span>")
        elif token not in vocabulary:
            pieces.append(f"<span class=oov title='not a feature of z'>{escaped}</span>")
        else:
            pieces.append(escaped)
    return "".join(pieces)


def sentences_page(title: str, sentences: list[ExplainedSentence], vocabulary: set[str] | dict[str, int]) -> str:
    """A self-contained HTML page: one block per sentence, one coloured line per model."""
    scale = max((abs(w) for s in sentences for _, weights in s.answers.values() for w in weights.values()),
                default=1.0)
    blocks = []
    for sentence in sentences:
        lines = "".join(
            f"<tr><td class=model>{html.escape(model)}</td><td class=answer>{html.escape(answer)}</td>"
            f"<td>{coloured_sentence(sentence.text, weights, vocabulary, scale)}</td></tr>"
            for model, (answer, weights) in sentence.answers.items()
        )
        blocks.append(f"<h3>true class: {html.escape(sentence.label)}</h3><table>{lines}</table>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:70em}}"
        "td{padding:3px 8px;vertical-align:top}.model{color:#555;white-space:nowrap}"
        ".answer{white-space:nowrap}.oov{color:#aaa}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>Each line: the model, the class it answered, and the sentence "
        "with the words it chose coloured by their weight for that class: <b style='color:#c22'>red</b> "
        "positive, <b style='color:#25c'>blue</b> negative (stronger colour, larger |weight|); "
        "<span class=oov>grey</span> words are not features of the bag of words (stopwords, rare words). "
        "Hover a word for its weight.</p>" + "".join(blocks) + "</body></html>"
    )
