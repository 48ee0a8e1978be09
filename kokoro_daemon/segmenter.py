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
_NONSPACE = re.compile(r"\S*")
_TERMINAL_RUN = re.compile(f"[{_TERMINAL}]+")
# A word that ends a clause, as _CLAUSE_IN_TEXT finds it: a mark at its end, or a spaced hyphen.
_CLAUSE_WORD = re.compile(f"(?:.*[,;:—–]|-)[{re.escape(_CLOSERS)}]*", re.S)
_DIGIT = re.compile(r"\d")

# A first segment of about N words: a clause mark within this many words of the N-th is
# preferred, a word cut may move this many words on, and at least _MIN_REST_WORDS words
# of the sentence must follow the cut.
_WORDS_SLACK = 2
_MIN_REST_WORDS = 3

# Returned by the boundary checks when the text after a mark has not arrived.
_WAIT = object()


class SentenceSegmenter:
    """Splits one reply at a time into segments short enough to speak.

    Segmenting is linear in the text: while a segment's start stays put, the scan for
    marks resumes where it stopped (a mark found not to end the segment stays so as text
    arrives), the collapsed length that the first-clause and over-long rules need is
    counted word by word as the scan goes, and nothing past the point where the segment
    must be cut as over-long is read. A cut starts both afresh at the next segment. Each
    chunk is appended to the text still undecided, so a flood of tiny chunks behind a
    long undecided tail (spaces after "Dr.") costs that tail each time: callers bound it
    with ``buffered_chars``.
    """

    def __init__(self, first_clause_min_chars: int | None = 20, max_chars: int = 300,
                 first_words: int | None = None):
        """``first_words`` None: a reply's first segment ends at its first clause of at least
        ``first_clause_min_chars`` (None: at its first sentence's end, as every other segment);
        N: after about N words (see ``_words_cut``)."""
        if max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        if first_words is not None and first_words < 1:
            raise ValueError("first_words must be at least 1")
        self.first_clause_min_chars = first_clause_min_chars
        self.first_words = first_words
        self.max_chars = max_chars
        self._buf = ""
        self._first = True
        self._silent_to = 0  # no speakable character in _buf before this
        self._run = (0, 0, -1)  # a run of terminal marks read once: start, end, its last "!" or "?"
        self._start_segment(0)

    def add_chunk(self, text: str) -> list[str]:
        """Append streamed text; return the segments that are now certainly complete, in order.

        Terminal punctuation at the end of the buffer ends a sentence at once,
        because a client may send a whole reply as one chunk and nothing after
        it; only an ending that could still continue (an abbreviation, an
        initial, a URL or "42." before "50") waits for more text or finish().
        """
        self._buf += text
        # A word or a run of marks at the old end may go on: read them again.
        self._known_to = self._read_at
        self._run = (0, 0, -1)
        return self._drain(final=False)

    def finish(self) -> list[str]:
        """Return whatever is buffered as final segment(s) (split further if over max_chars) and reset, so the same object serves the next reply."""
        segments = self._drain(final=True)
        self._first = True
        return segments

    @property
    def pending(self) -> bool:
        """True when text is buffered that finish() would return."""
        found = _SPEAKABLE.search(self._buf, self._silent_to)
        self._silent_to = found.start() if found else len(self._buf)
        return found is not None

    @property
    def buffered_chars(self) -> int:
        """Characters received and not yet returned in a segment (whitespace included)."""
        return len(self._buf)

    def _start_segment(self, pos: int) -> None:
        """The next segment starts at ``pos``: nothing is known yet about the text after it."""
        self._pos = self._scan = self._read_at = self._known_to = pos
        self._read_len = 0  # length of _buf[pos:_read_at] with its whitespace collapsed
        self._clause_at = pos if self.first_clause_min_chars is not None and self.first_clause_min_chars <= 0 \
            else None
        self._overlong_at: int | None = None

    def _drain(self, final: bool) -> list[str]:
        segments = []
        while self._pos < len(self._buf):
            cut = self._next_cut(final)
            if cut is None:
                break
            end, resume = cut
            segment = " ".join(self._buf[self._pos : end].split())
            self._start_segment(resume)
            if _SPEAKABLE.search(segment):
                segments.append(segment)
                self._first = False
        if self._pos:
            self._buf = self._buf[self._pos :]
            self._silent_to = 0
            self._run = (0, 0, -1)
            self._start_segment(0)
        return segments

    def _next_cut(self, final: bool) -> tuple[int, int] | None:
        end, resume = self._find_boundary(final)
        # Text up to `end` belongs to the next segment whatever follows, so an
        # over-long sentence can be cut before its end arrives.
        overlong = self._overlong_at is not None and end >= self._overlong_at
        if self._first and self.first_words is not None:
            # The words before the over-long point are all the segment will ever have.
            cut = self._words_cut(self._overlong_at if overlong else end, complete=overlong or resume is not None)
            if cut is not None:
                return cut, cut
        if overlong:
            split = self._overlong_split()
            return split, split
        return None if resume is None else (end, resume)

    def _find_boundary(self, final: bool) -> tuple[int, int | None]:
        """Return (end, resume) of the next segment, or (safe, None) while a mark awaits more text.

        No boundary can come before `safe`, which bounds what the over-long
        check may count as part of the segment. Marks are looked for only where
        the text is measured, and not at all past the point where it is over-long.
        """
        buf, i, ahead = self._buf, self._scan, 1
        self._measure(i + ahead)
        while True:
            limit = self._known_to if self._overlong_at is None else self._overlong_at
            m = _CANDIDATE.search(buf, i, limit)
            if m is None:
                self._scan = i = limit
                if limit == len(buf) or self._overlong_at is not None:
                    break
                ahead *= 2  # read on as far again as the scan has gone without a mark
                self._measure(limit + ahead)
                continue
            start = m.start()
            if buf[start] in _TERMINAL:
                i, exclaims = self._terminal_run(start)
                found = self._sentence_end(start, i, exclaims)
            elif buf[start] == "\n":
                i = start + 1
                found = self._line_break(start)
            else:
                i = start + 1
                # A segment's first character has nothing before it to space a dash off;
                # a first segment of about N words weighs its clause marks in _words_cut.
                if not self._first or self.first_words is not None or (start == self._pos and buf[start] == "-"):
                    continue
                found = self._clause_end(start)
            if found is _WAIT:
                self._scan = start
                if not final:
                    return start, None
                self._measure(len(buf))  # the rest is all one segment: is it over-long?
                return len(buf), len(buf)
            if found is not None:
                return found
        return len(buf), len(buf) if final else None

    def _measure(self, upto: int) -> None:
        """Count the segment's collapsed length word by word until past ``upto``.

        Notes where it first reaches first_clause_min_chars and where it first
        exceeds max_chars; reads no word further than that.
        """
        buf = self._buf
        upto = min(upto, len(buf))
        while self._overlong_at is None and self._known_to < upto:
            start = _SPACE.match(buf, self._read_at, upto).end()
            if start == upto:
                self._read_at = self._known_to = start
                return
            sep = 1 if self._read_len else 0
            room = max(1, self.max_chars + 1 - self._read_len - sep)
            end = _NONSPACE.match(buf, start, start + room).end()
            if self._clause_at is None and self.first_clause_min_chars is not None:
                clause_at = start + max(1, self.first_clause_min_chars - self._read_len - sep)
                if clause_at <= end:
                    self._clause_at = clause_at
            if end == start + room:
                self._overlong_at = end
            elif end == len(buf):
                self._known_to = end  # the word may go on: count it again with the next chunk
            else:
                self._read_len += sep + end - start
                self._read_at = self._known_to = end

    def _terminal_run(self, start: int) -> tuple[int, bool]:
        """Where the run of terminal marks at ``start`` ends, and whether it holds "!" or "?".

        A long run is read once, not again for every over-long cut inside it.
        """
        run_start, run_end, last_exclaim = self._run
        if not run_start <= start < run_end:
            run_end = _TERMINAL_RUN.match(self._buf, start).end()
            last_exclaim = max(self._buf.rfind("!", start, run_end), self._buf.rfind("?", start, run_end))
            self._run = (start, run_end, last_exclaim)
        return run_end, last_exclaim >= start

    def _sentence_end(self, start: int, stop: int, exclaims: bool):
        """Whether the run of terminal marks ``_buf[start:stop]`` ends a sentence."""
        buf = self._buf
        end = _CLOSING.match(buf, stop).end()
        after = _SPACE.match(buf, end).end()
        if after == end < len(buf):
            return None
        single_dot = stop == start + 1 and buf[start] == "."
        if after == len(buf):
            return _WAIT if single_dot and self._ambiguous_end(start) else (end, end)
        first_char = _OPENING.match(buf, after).end()
        if first_char == len(buf):
            return _WAIT
        nxt = buf[first_char]
        if exclaims:
            return end, end
        if nxt.islower():
            return None
        if not single_dot:
            return end, end
        word_start, token = self._token(start)
        word = token.lower()
        if word in _TITLES or (word == "no." and nxt.isdigit()):
            return None
        if word in _CAPITAL_ENDERS:
            return (end, end) if nxt.isupper() else None
        if _INITIALS.fullmatch(token) or self._is_list_number(token, word_start):
            return None
        return end, end

    def _token(self, dot: int) -> tuple[int, str]:
        """The word a final "." belongs to, from its start: abbreviations and list numbers are recognised whole."""
        word_start = dot
        while word_start > self._pos and not self._buf[word_start - 1].isspace():
            word_start -= 1
        return word_start, self._buf[word_start : dot + 1].lstrip(_OPENERS)

    def _ambiguous_end(self, dot: int) -> bool:
        """Whether more text could still make this final "." part of a word or number."""
        _, token = self._token(dot)
        word = token.lower()
        return (
            (dot > self._pos and self._buf[dot - 1].isdigit())
            or word in _TITLES
            or word in _CAPITAL_ENDERS
            or _INITIALS.fullmatch(token) is not None
            or _ADDRESS.search(token[:-1]) is not None
        )

    def _is_list_number(self, token: str, word_start: int) -> bool:
        """A number opening a line ("1.") is a list marker, not a sentence end."""
        line_start = max(self._pos, self._buf.rfind("\n", self._pos, word_start) + 1)
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

    def _clause_end(self, start: int):
        """Ends the first segment early so the first audio comes sooner."""
        if self._clause_at is None or start < self._clause_at:
            return None
        end = _CLOSING.match(self._buf, start + 1).end()
        if end == len(self._buf):
            return _WAIT
        return (end, end) if self._buf[end].isspace() else None

    def _words_cut(self, end: int, complete: bool) -> int | None:
        """Where to end a first segment of about ``first_words`` words in ``_buf[_pos:end]``, or None.

        ``complete``: the segment ends at ``end``; else more words may follow, and only
        words followed by a space count. The cut is after the clause mark nearest the
        N-th word (within _WORDS_SLACK, the later on a tie), else after the first of
        words N to N + _WORDS_SLACK that a word may follow alone: none where a digit is on
        either side (times, money, dates, codes, "8 AM", "3 to 5"), nor inside a name
        (see _read_together). It leaves _MIN_REST_WORDS words or more. It is decided
        from the first N + _WORDS_SLACK + _MIN_REST_WORDS words, so it is the same
        however the text arrives: until they are here, or the segment is complete, None.
        """
        n, buf = self.first_words, self._buf
        enough = n + _WORDS_SLACK + _MIN_REST_WORDS
        words, counted = [], 0
        for match in _WORD.finditer(buf, self._pos, end):
            if not complete and match.end() == end and not buf[end : end + 1].isspace():
                break  # the word may go on
            counted += _SPEAKABLE.search(match.group()) is not None
            words.append((match.group(), match.end(), counted))
            if counted == enough:
                break
        if counted < enough and not complete:
            return None
        clauses, plain = [], None
        for (word, word_end, count), (following, _, _) in zip(words, words[1:]):
            if counted - count < _MIN_REST_WORDS or count > n + _WORDS_SLACK:
                break
            digits = _DIGIT.search(word) is not None, _DIGIT.search(following) is not None
            if count >= max(1, n - _WORDS_SLACK) and _CLAUSE_WORD.fullmatch(word) and not all(digits):
                clauses.append((abs(count - n), -count, word_end))
            elif plain is None and count >= n and not any(digits) and not self._read_together(word, following):
                plain = word_end
        return min(clauses)[2] if clauses else plain

    @staticmethod
    def _read_together(word: str, following: str) -> bool:
        """Whether two words are read as one: a title or initial and a name ("Dr. Smith", "J. Smith"),
        a name of several words ("Baker Street"); a symbol goes with its neighbours."""
        word, following = word.lstrip(_OPENERS), following.lstrip(_OPENERS)
        lowered = word.lower()
        return (lowered in _TITLES or lowered + "." in _TITLES or lowered == "no."
                or _INITIALS.fullmatch(word) is not None or (word[:1].isupper() and following[:1].isupper())
                or not (_SPEAKABLE.search(word) and _SPEAKABLE.search(following)))

    def _overlong_split(self) -> int:
        """Where to cut the segment to keep its first piece within max_chars.

        Only the first max_chars + 1 characters of the collapsed text decide the
        cut, so it is the same whether or not the rest has arrived; they all lie
        before the point where the text first exceeds max_chars.
        """
        words = list(_WORD.finditer(self._buf, self._pos, self._overlong_at))
        window = " ".join(w.group() for w in words)[: self.max_chars + 1]
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
