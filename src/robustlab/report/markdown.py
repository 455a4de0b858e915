"""Strings from records, study files, configs and paths shown in robustlab's Markdown as the text they are.

The writers of ``report.md``, ``leaderboard.md``, the ``--compare`` table, study pages and the README's study
block build their own Markdown (headings, table pipes, links, code spans) and pass every string they did not
write through :func:`md_text`, so a model name, run name, label, flag, attack name, title or path can neither
run as HTML (a ``<script>`` in a record), nor become a link, image or emphasis, nor break a table row (a ``|``
or a line break). Numbers robustlab formats itself need nothing. Verbatim blocks (the commands a study runs)
go through :func:`md_fence` instead: a fenced block shows its content literally and only needs a fence that
nothing inside it can close.
"""

from __future__ import annotations

import html
import re

_LINE_BREAKS = re.compile(r"[\r\n]+")
# backslash first in the class so a record's own backslash stays a backslash; an underscore only where it
# could open or close emphasis (not between two letters or digits)
_ACTIVE = re.compile(r"[\\`*\[\]~$|]|(?<![^\W_])_|_(?![^\W_])")
_BACKTICKS = re.compile(r"`+")


def md_text(value: object) -> str:
    """``value`` as inline Markdown text that renders as exactly these characters (line breaks as spaces).

    ``&``, ``<`` and ``>`` become HTML entities (no raw HTML, no autolink); ``\\``, `````, ``*``, ``[``,
    ``]``, ``~`` (strikethrough), ``$`` (GitHub's math) and ``|`` (a table cell's end, also inside a code span
    in a table) get a backslash; line breaks become one space each run, so a value stays on its row or line.

    ``_`` keeps its plain form between two letters or digits (``digits_pgd_at``, ``black_box``): CommonMark and
    GitHub never open or close emphasis inside a word with ``_``, so names stay readable in the file; any other
    ``_`` (``_x_``, ``__init__``) gets a backslash. ``*`` always does: ``a*b*c`` is emphasis. Characters that
    only mean something at the start of a line (``#``, ``-``, ``+``, ``1.``) are left alone: the writers always
    put their own syntax first on a line. A bare ``https://host.tld`` may still be autolinked by GitHub, which
    shows the address itself. Inside a code span the backslashes and entities show as typed, yet a backtick in
    the value only ends the span early, and what follows it is escaped text.
    """
    text = html.escape(_LINE_BREAKS.sub(" ", str(value)), quote=False)
    return _ACTIVE.sub(lambda match: "\\" + match.group(), text)


def md_fence(text: str) -> str:
    """``text`` as a fenced code block whose fence (at least three backticks) is longer than any run of
    backticks in ``text``, so no line of it can close the block; the content is shown verbatim."""
    fence = "`" * max(3, 1 + max((len(run) for run in _BACKTICKS.findall(text)), default=0))
    return f"{fence}\n{text}\n{fence}"
