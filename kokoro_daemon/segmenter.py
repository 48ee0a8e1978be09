"""Streaming sentence segmentation for text-to-speech.

Reply text arrives in arbitrary pieces; speech can start as soon as the first
segment is certainly complete. Every boundary is decided from the text seen so
far and never revised, so a reply split into chunks yields the same segments
as the reply sent whole, except where a chunk ends right after terminal
punctuation (see `SentenceSegmenter.add_chunk`).
"""

import re

_TERMINAL = ".!?…"
_CLOSERS = "\"'”’)]»"
_OPENERS = "\"'“‘([«"

# Never end a sentence when more text follows ("Dr. Smith", "e.g. Visa").
_TITLES = frozenset(
    "mr. mrs. ms. mx. dr. prof. st. ave. rd. blvd. mt. apt. ste. jr. sr. "
    "vs. e.g. i.e. approx. dept. ext.".split()
)
# End a sentence only before a capitalised word ("at 10 a.m. Bye!").
_CAPITAL_ENDERS = frozenset("etc. a.m. p.m. inc. ltd. co.".split())
_INITIALS = re.compile(r"(?:[A-Z]\.)+")
# Dots, "@" or "/" inside the word: a URL or address may still be arriving.
_ADDRESS = re.compile(r"[.@/]")

_CANDIDATE = re.compile(r"[.!?…]+|[,;:—–]|(?<=\s)-|\n")
_CLOSING = re.compile(f"[{re.escape(_CLOSERS)}]*")
_OPENING = re.compile(f"[{re.escape(_OPENERS)}]*")
_SPACE = re.compile(r"\s*")
_LINE_SPACE = re.compile(r"[^\S\n]*")
_LIST_ITEM = re.compile(r"(?:[-*•]|\d{1,3}[.)])\s")
_LIST_ITEM_PREFIX = re.compile(r"[-*•]|\d{1,3}[.)]?")
_CLAUSE_IN_TEXT = re.compile(f"(?:[,;:—–]|(?<= )-)[{re.escape(_CLOSERS)}]*(?= )")
_SPEAKABLE = re.compile(r"[^\W_]")
_WORD = re.compile(r"\S+")

# Returned by the boundary checks when the text after a mark has not arrived.
_WAIT = object()


class SentenceSegmenter:
    """Splits one reply at a time into segments short enough to speak."""

    def __init__(self, first_clause_min_chars: int = 20, max_chars: int = 300):
        if max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        self.first_clause_min_chars = first_clause_min_chars
        self.max_chars = max_chars
        self._buf = ""
        self._first = True

    def add_chunk(self, text: str) -> list[str]:
        """Append streamed text; return the segments that are now certainly complete, in order.

        Terminal punctuation at the end of the buffer ends a sentence at once,
        because a client may send a whole reply as one chunk and nothing after
        it; only an ending that could still continue (an abbreviation, an
        initial, a URL or "42." before "50") waits for more text or finish().
        """
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> list[str]:
        """Return whatever is buffered as final segment(s) (split further if over max_chars) and reset, so the same object serves the next reply."""
        segments = self._drain(final=True)
        self._first = True
        return segments

    @property
    def buffered_chars(self) -> int:
        """Characters received but not yet returned as segments."""
        return len(self._buf)

    @property
    def pending(self) -> bool:
        """True when text is buffered that finish() would return."""
        return _SPEAKABLE.search(self._buf) is not None

    def _drain(self, final: bool) -> list[str]:
        segments = []
        while self._buf:
            cut = self._next_cut(final)
            if cut is None:
                break
            end, resume = cut
            segment = " ".join(self._buf[:end].split())
            self._buf = self._buf[resume:]
            if _SPEAKABLE.search(segment):
                segments.append(segment)
                self._first = False
        return segments

    def _next_cut(self, final: bool) -> tuple[int, int] | None:
        end, resume = self._find_boundary(final)
        # Text up to `end` belongs to the next segment whatever follows, so an
        # over-long sentence can be cut before its end arrives.
        split = self._overlong_split(self._buf[:end])
        if split is not None:
            return split, split
        return None if resume is None else (end, resume)

    def _find_boundary(self, final: bool) -> tuple[int, int | None]:
        """Return (end, resume) of the next segment, or (safe, None) while a mark awaits more text.

        No boundary can come before `safe`, which bounds what the over-long
        check may count as part of the segment.
        """
        safe = len(self._buf)
        for m in _CANDIDATE.finditer(self._buf):
            mark = m.group()
            if mark == "\n":
                found = self._line_break(m.start())
            elif mark[0] in _TERMINAL:
                found = self._sentence_end(m)
            elif self._first:
                found = self._clause_end(m)
            else:
                continue
            if found is _WAIT:
                safe = m.start()
                break
            if found is not None:
                return found
        if final:
            return len(self._buf), len(self._buf)
        return safe, None

    def _sentence_end(self, m: re.Match):
        buf, run = self._buf, m.group()
        end = _CLOSING.match(buf, m.end()).end()
        after = _SPACE.match(buf, end).end()
        if after == end < len(buf):
            return None
        word_start = self._word_start(m.start())
        token = buf[word_start : m.end()].lstrip(_OPENERS)
        if after == len(buf):
            return _WAIT if self._ambiguous_end(run, token, m.start()) else (end, end)
        first_char = _OPENING.match(buf, after).end()
        if first_char == len(buf):
            return _WAIT
        nxt = buf[first_char]
        if "!" in run or "?" in run:
            return end, end
        if nxt.islower():
            return None
        if run != ".":
            return end, end
        word = token.lower()
        if word in _TITLES or (word == "no." and nxt.isdigit()):
            return None
        if word in _CAPITAL_ENDERS:
            return (end, end) if nxt.isupper() else None
        if _INITIALS.fullmatch(token) or self._is_list_number(token, word_start):
            return None
        return end, end

    def _ambiguous_end(self, run: str, token: str, start: int) -> bool:
        """Whether more text could still make this final "." part of a word or number."""
        if run != ".":
            return False
        word = token.lower()
        return (
            self._buf[start - 1 : start].isdigit()
            or word in _TITLES
            or word in _CAPITAL_ENDERS
            or _INITIALS.fullmatch(token) is not None
            or _ADDRESS.search(token[:-1]) is not None
        )

    def _is_list_number(self, token: str, word_start: int) -> bool:
        """A number opening a line ("1.") is a list marker, not a sentence end."""
        line_start = self._buf.rfind("\n", 0, word_start) + 1
        return token[:-1].isdigit() and not self._buf[line_start:word_start].strip()

    def _line_break(self, i: int):
        """A blank line or a new list item ends a segment; LLMs write lists."""
        buf = self._buf
        j = _LINE_SPACE.match(buf, i + 1).end()
        if j == len(buf):
            return _WAIT
        if buf[j] == "\n":
            return i, j + 1
        if _LIST_ITEM.match(buf, j):
            return i, i + 1
        if _LIST_ITEM_PREFIX.fullmatch(buf, j):
            return _WAIT
        return None

    def _clause_end(self, m: re.Match):
        """Ends the first segment early so the first audio comes sooner."""
        if len(" ".join(self._buf[: m.start()].split())) < self.first_clause_min_chars:
            return None
        end = _CLOSING.match(self._buf, m.end()).end()
        if end == len(self._buf):
            return _WAIT
        return (end, end) if self._buf[end].isspace() else None

    def _word_start(self, i: int) -> int:
        """Abbreviations and list numbers are recognised by the whole word."""
        while i and not self._buf[i - 1].isspace():
            i -= 1
        return i

    def _overlong_split(self, raw: str) -> int | None:
        """Where to cut `raw` to keep its first piece within max_chars, or None if it fits.

        Only the first max_chars + 1 characters of the collapsed text decide the
        cut, so it is the same whether or not the rest has arrived.
        """
        words = list(_WORD.finditer(raw))
        text = " ".join(w.group() for w in words)
        if len(text) <= self.max_chars:
            return None
        window = text[: self.max_chars + 1]
        clauses = [c.end() for c in _CLAUSE_IN_TEXT.finditer(window)]
        space = window.rfind(" ")
        length = clauses[-1] if clauses else space if space > 0 else self.max_chars
        for w in words:
            if length <= len(w.group()):
                return w.start() + length
            length -= len(w.group()) + 1


def split_text(text: str, **kwargs) -> list[str]:
    """Segment a complete reply, as the non-streaming path needs."""
    segmenter = SentenceSegmenter(**kwargs)
    return segmenter.add_chunk(text) + segmenter.finish()
