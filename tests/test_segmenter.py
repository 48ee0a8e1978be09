import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kokoro_daemon.segmenter import SentenceSegmenter, split_text

REFERENCE_REPLY = (
    "Thank you for calling. How can I help you today? I can look up your "
    "account, book an appointment, or transfer you to billing."
)
REFERENCE_SEGMENTS = [
    "Thank you for calling.",
    "How can I help you today?",
    "I can look up your account, book an appointment, or transfer you to billing.",
]


def stream(chunks, **kwargs):
    """Feed chunks one by one; return what each add_chunk gave and what finish gave."""
    segmenter = SentenceSegmenter(**kwargs)
    per_chunk = [segmenter.add_chunk(chunk) for chunk in chunks]
    return per_chunk, segmenter.finish()


SPLIT_CASES = [
    ("reference reply", REFERENCE_REPLY, REFERENCE_SEGMENTS),
    ("title before name", "Dr. Smith will see you now. Please wait.",
     ["Dr. Smith will see you now.", "Please wait."]),
    ("several titles", "Mr. and Mrs. Jones arrived. They sat down.",
     ["Mr. and Mrs. Jones arrived.", "They sat down."]),
    ("saint", "St. Mary's Hospital is open. Come by.",
     ["St. Mary's Hospital is open.", "Come by."]),
    ("e.g.", "Bring ID, e.g. a passport. Thanks.", ["Bring ID, e.g. a passport.", "Thanks."]),
    ("i.e. before a capital", "Pay by card, i.e. Visa. Thanks.",
     ["Pay by card, i.e. Visa.", "Thanks."]),
    ("etc. before a capital", "Pens, paper, etc. We also ship.",
     ["Pens, paper, etc.", "We also ship."]),
    ("etc. before lowercase", "Pens, paper, etc. are in stock.", ["Pens, paper, etc. are in stock."]),
    ("a.m. before a capital", "See you at 10 a.m. Bye!", ["See you at 10 a.m.", "Bye!"]),
    ("p.m. before lowercase", "The call is at 4:30 p.m. today. Bye!",
     ["The call is at 4:30 p.m. today.", "Bye!"]),
    ("Inc. before a capital", "I work at Acme Inc. It is great.",
     ["I work at Acme Inc.", "It is great."]),
    ("No. before a number", "Go to gate No. 5 now. Hurry.", ["Go to gate No. 5 now.", "Hurry."]),
    ("no as an answer", "Did it work? No. Try again.", ["Did it work?", "No.", "Try again."]),
    ("initials", "J. Smith served in the U.S. Army for years. Bye.",
     ["J. Smith served in the U.S. Army for years.", "Bye."]),
    ("decimal", "Pi is about 3.14 today. Nice.", ["Pi is about 3.14 today.", "Nice."]),
    ("money", "It costs $42.50 total. Your balance is $1,250.00 now.",
     ["It costs $42.50 total.", "Your balance is $1,250.00 now."]),
    ("time", "Meet me at 10:15 tomorrow. Bring coffee.", ["Meet me at 10:15 tomorrow.", "Bring coffee."]),
    ("date", "Your visit is on 11/03/2026 at noon. See you.",
     ["Your visit is on 11/03/2026 at noon.", "See you."]),
    ("version", "Update to version 2.4.1 first. Then restart.",
     ["Update to version 2.4.1 first.", "Then restart."]),
    ("url", "Visit www.example.com/path for details. Or call us.",
     ["Visit www.example.com/path for details.", "Or call us."]),
    ("url at sentence end", "Visit www.example.com. Or call us.", ["Visit www.example.com.", "Or call us."]),
    ("e-mail", "Email help@example.com today. We reply fast.",
     ["Email help@example.com today.", "We reply fast."]),
    ("ellipsis before lowercase", "Well... maybe tomorrow.", ["Well... maybe tomorrow."]),
    ("ellipsis before a capital", "I see... Let me check.", ["I see...", "Let me check."]),
    ("unicode ellipsis", "Hmm… maybe. Hmm… Yes.", ["Hmm… maybe.", "Hmm…", "Yes."]),
    ("?! run", "You won?! That is great!", ["You won?!", "That is great!"]),
    ("question before lowercase", "Really? yes.", ["Really?", "yes."]),
    ("quote after the period", 'He said "hi." Then left.', ['He said "hi."', "Then left."]),
    ("bracket after the period", "Call us (we are open.) Thanks.", ["Call us (we are open.)", "Thanks."]),
    ("period before lowercase", "The price went up. but not much.", ["The price went up. but not much."]),
    ("period inside a word", "Done.Next step.", ["Done.Next step."]),
    ("blank lines", "Here are your options\n\nBilling\n\n\nSupport",
     ["Here are your options", "Billing", "Support"]),
    ("blank line after a title", "Ask for Dr.\n\nnext, the forms.", ["Ask for Dr.", "next, the forms."]),
    ("blank line with spaces", "First part \n  \n second part", ["First part", "second part"]),
    ("numbered list", "Your options are:\n1. Billing\n2. Support",
     ["Your options are:", "1. Billing", "2. Support"]),
    ("bulleted list", "Pick one:\n- Billing\n- Support", ["Pick one:", "- Billing", "- Support"]),
    ("single newline", "Hello there\nfriend. Bye.", ["Hello there friend.", "Bye."]),
    ("whitespace collapses", "Hello   there,\n  friend.  Bye. ", ["Hello there, friend.", "Bye."]),
    ("punctuation-only dropped", "Okay.\n\n—\n\n...\n\nSure.", ["Okay.", "Sure."]),
    ("leading ellipsis dropped", "... Okay then.", ["Okay then."]),
    ("empty", "", []),
    ("whitespace only", " \n\n ", []),
    ("first clause at comma", "Sure, I can definitely help with that, let me pull up your account. "
     "One moment, please.",
     ["Sure, I can definitely help with that,", "let me pull up your account.", "One moment, please."]),
    ("first clause at em dash", "Let me check that for you — one moment please.",
     ["Let me check that for you —", "one moment please."]),
    ("first clause at en dash", "Let me check that for you – one moment.",
     ["Let me check that for you –", "one moment."]),
    ("first clause at spaced hyphen", "Let me check that for you - one moment.",
     ["Let me check that for you -", "one moment."]),
    ("first clause at semicolon", "Your account is up to date; nothing is due.",
     ["Your account is up to date;", "nothing is due."]),
    ("first clause at colon", "Here is what I found today: two open tickets.",
     ["Here is what I found today:", "two open tickets."]),
    ("first clause too short", "Yes, of course.", ["Yes, of course."]),
    ("unspaced dash is no clause", "That is a well-known and long–standing issue.",
     ["That is a well-known and long–standing issue."]),
    ("comma inside a number", "We have 1,250 seats available for the event, and more.",
     ["We have 1,250 seats available for the event,", "and more."]),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES])
def test_split_text(text, expected):
    assert split_text(text) == expected


@pytest.mark.parametrize(
    "text,kwargs,expected",
    [
        ("Yes, I can help.", {"first_clause_min_chars": 3}, ["Yes,", "I can help."]),
        ("one two three four five six", {"max_chars": 10}, ["one two", "three four", "five six"]),
        ("alpha beta, gamma delta epsilon", {"max_chars": 20}, ["alpha beta,", "gamma delta epsilon"]),
        ("abcdefghijkl", {"max_chars": 5}, ["abcde", "fghij", "kl"]),
        ("Short one. " + "Word " * 70 + "end.", {},
         ["Short one.", ("Word " * 60).strip(), ("Word " * 10) + "end."]),
        ("tiny.", {"max_chars": 5}, ["tiny."]),
    ],
)
def test_split_text_options(text, kwargs, expected):
    assert split_text(text, **kwargs) == expected


def test_no_segment_exceeds_max_chars():
    text = " ".join(f"item{i}," for i in range(200)) + " done."
    segments = split_text(text, max_chars=50)
    assert max(len(s) for s in segments) <= 50
    assert " ".join(segments) == text


def test_max_chars_must_be_positive():
    with pytest.raises(ValueError):
        SentenceSegmenter(max_chars=0)


STREAM_CASES = [
    ("split mid-word",
     ["Thank you for cal", "ling. How can I he", "lp?"],
     [[], ["Thank you for calling."], ["How can I help?"]], []),
    ("number split after its dot",
     ["It costs $42.", "50 today."],
     [[], ["It costs $42.50 today."]], []),
    ("number split before its dot",
     ["It costs $42", ".50 today. Th", "anks."],
     [[], ["It costs $42.50 today."], ["Thanks."]], []),
    ("period then space in the next chunk",
     ["See Dr.", " Smith now. ", "Bye"],
     [[], ["See Dr. Smith now."], []], ["Bye"]),
    ("whole reply as one chunk", [REFERENCE_REPLY], [REFERENCE_SEGMENTS], []),
    ("whole reply ending in a newline", ["Hello there. Goodbye!\n"], [["Hello there.", "Goodbye!"]], []),
    ("ambiguous title at the end", ["Please see Dr."], [[]], ["Please see Dr."]),
    ("ambiguous abbreviation at the end", ["We open at 9 a.m."], [[]], ["We open at 9 a.m."]),
    ("ambiguous initials at the end", ["He served in the U.S."], [[]], ["He served in the U.S."]),
    ("ambiguous e-mail at the end",
     ["Write to help@example.", "com please."],
     [[], ["Write to help@example.com please."]], []),
    ("end-of-chunk ellipsis is a boundary", ["Let me check..."], [["Let me check..."]], []),
    ("clause needs the following space",
     ["Certainly, let me look at that,", " then we can talk."],
     [[], ["Certainly, let me look at that,", "then we can talk."]], []),
    ("opening quote ends a chunk",
     ["He left. “", "yes,” she said."],
     [[], ["He left. “yes,” she said."]], []),
    ("list marker split across chunks",
     ["Options:\n1", ". Billing\n2", ". Support"],
     [[], ["Options:"], ["1. Billing"]], ["2. Support"]),
]


@pytest.mark.parametrize(
    "chunks,expected_per_chunk,expected_finish",
    [c[1:] for c in STREAM_CASES],
    ids=[c[0] for c in STREAM_CASES],
)
def test_streaming(chunks, expected_per_chunk, expected_finish):
    assert stream(chunks) == (expected_per_chunk, expected_finish)


def test_over_long_sentence_is_cut_before_it_ends():
    assert stream(["one two three", " four five"], max_chars=10) == (
        [["one two"], ["three four"]],
        ["five"],
    )


def test_token_by_token_stream_yields_each_sentence_as_soon_as_it_ends():
    tokens = re.findall(r"\s*\S+", REFERENCE_REPLY)
    per_chunk, final = stream(tokens)
    emitted = [(tokens[i], segs) for i, segs in enumerate(per_chunk) if segs]
    assert emitted == [
        (" calling.", ["Thank you for calling."]),
        (" today?", ["How can I help you today?"]),
        (" billing.", [REFERENCE_SEGMENTS[2]]),
    ]
    assert final == []


def test_undecided_list_marker_does_not_count_toward_max_chars():
    chunks = ["ab, defghij\n1", ". Billing"]
    assert stream(chunks, max_chars=11, first_clause_min_chars=50) == (
        [[], ["ab, defghij"]],
        ["1. Billing"],
    )


def test_pending_tracks_buffered_text():
    segmenter = SentenceSegmenter()
    assert not segmenter.pending
    segmenter.add_chunk(" \n ")
    assert not segmenter.pending
    assert segmenter.add_chunk("Please see Dr.") == []
    assert segmenter.pending
    assert segmenter.finish() == ["Please see Dr."]
    assert not segmenter.pending
    assert segmenter.finish() == []


def test_reuse_after_finish_gets_a_short_first_clause_again():
    segmenter = SentenceSegmenter()
    first = segmenter.add_chunk("Sure thing, happy to help you today, one moment. Okay, what next, then?")
    assert first == ["Sure thing, happy to help you today,", "one moment.", "Okay, what next, then?"]
    assert segmenter.finish() == []
    second = segmenter.add_chunk("Of course, I understand completely, give me a second. Done, all set.")
    assert second == ["Of course, I understand completely,", "give me a second.", "Done, all set."]


def test_finish_flushes_an_unfinished_sentence_and_resets():
    segmenter = SentenceSegmenter()
    assert segmenter.add_chunk("I can look up your account") == []
    assert segmenter.finish() == ["I can look up your account"]
    assert segmenter.add_chunk("A new reply, with a first clause that is long, ends.") == [
        "A new reply, with a first clause that is long,",
        "ends.",
    ]


# --- Property tests: chunking must not change the result ---------------------

WORDS = [
    "Hello", "world", "thanks", "I", "Dr.", "Mr.", "Smith", "e.g.", "i.e.", "etc.",
    "a.m.", "p.m.", "Inc.", "No.", "no.", "St.", "$42.50", "$1,250.00", "42.", "10:15",
    "11/03/2026", "2.4.1", "www.example.com/path", "help@example.com", "Well...", "maybe",
    "yes!", "Really?!", "done.", "J.", "U.S.", "Army", "—", "–", "-", "call,", "note:",
    "wait;", '"hi."', "(ok.)", "“yes,”", "(see", "3.14", "…", "1.", "2)", "*",
]
SEPARATORS = [" ", " ", " ", "  ", "\n", "\n\n", " \n \n"]

texts = st.one_of(
    st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPARATORS)), max_size=40).map(
        lambda pairs: "".join(word + sep for word, sep in pairs)
    ),
    st.text(alphabet="aB1 .,;:!?…-—\n\"'“”)(@/$", max_size=120),
)
options = st.fixed_dictionaries(
    {
        "first_clause_min_chars": st.integers(0, 30),
        "max_chars": st.one_of(st.integers(1, 30), st.integers(31, 300)),
    }
)

# A chunk ending here may end a sentence that the whole text would continue.
CHUNK_FINAL_AMBIGUITY = re.compile(r"[.!?…][\"'”’)\]»]*\s*\Z")


def speakable_words(text):
    return [w for w in text.split() if re.search(r"[^\W_]", w)]


def chunked(text, cuts):
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=400, deadline=None)
@given(texts, options)
def test_split_text_keeps_every_word(text, kwargs):
    longest = max((len(w) for w in text.split()), default=1)
    kwargs["max_chars"] = max(kwargs["max_chars"], longest)
    segments = split_text(text, **kwargs)
    assert speakable_words(" ".join(segments)) == speakable_words(text)
    assert all(len(s) <= kwargs["max_chars"] and s == s.strip() for s in segments)


@settings(max_examples=400, deadline=None)
@given(texts, options, st.data())
def test_streaming_matches_whole_text(text, kwargs, data):
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=10))
    cuts = [c for c in cuts if not CHUNK_FINAL_AMBIGUITY.search(text[:c])]
    per_chunk, final = stream(chunked(text, cuts), **kwargs)
    assert [s for segs in per_chunk for s in segs] + final == split_text(text, **kwargs)


@settings(max_examples=400, deadline=None)
@given(texts, options, st.data())
def test_any_chunking_keeps_every_character(text, kwargs, data):
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=10))
    per_chunk, final = stream(chunked(text, cuts), **kwargs)
    spoken = "".join(s for segs in per_chunk for s in segs) + "".join(final)
    assert re.findall(r"[^\W_]", spoken) == re.findall(r"[^\W_]", text)


# --- Cost: linear in the text ----------------------------------------------------------------------------
# The timeouts guard against a return of the quadratic rescan (200 KB took 7 s of CPU, 10 MiB hours);
# the figures themselves come from bench/segmenter.py.


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ten_mib_unpunctuated_chunk_is_cut_without_rescanning():
    text = ("alpha " * 1_800_000)[: 10 * 1024 * 1024]
    segmenter = SentenceSegmenter()
    segments = segmenter.add_chunk(text)
    assert segmenter.buffered_chars < 300 * 2
    segments += segmenter.finish()
    assert all(len(s) <= 300 for s in segments)
    assert " ".join(segments) == text.strip()
    assert segmenter.buffered_chars == 0


@pytest.mark.timeout(120)
def test_two_mib_of_words_with_commas():
    text = ("word, " * 400_000)[: 2 * 1024 * 1024] + "end."
    segments = split_text(text)
    assert segments[0] == "word, word, word, word,"  # the first clause, then over-long cuts at commas
    assert all(len(s) <= 300 and s.endswith((",", "end.")) for s in segments)
    assert " ".join(segments) == " ".join(text.split())


def test_buffered_chars_counts_what_is_not_yet_a_segment():
    segmenter = SentenceSegmenter()
    assert segmenter.buffered_chars == 0
    assert segmenter.add_chunk("Hello there. Please see Dr.") == ["Hello there."]
    assert segmenter.buffered_chars == len(" Please see Dr.")
    segmenter.add_chunk("  ")
    assert segmenter.buffered_chars == len(" Please see Dr.  ")
    assert segmenter.finish() == ["Please see Dr."]
    assert segmenter.buffered_chars == 0


class BruteForce(SentenceSegmenter):
    """The reference: every cut reads the buffer again from the segment's start, and the
    collapsed lengths come from collapsing each prefix, so nothing carries over between
    cuts or chunks."""

    def _next_cut(self, final):
        self._start_segment(self._pos)
        self._run = (0, 0, -1)
        return super()._next_cut(final)

    def _measure(self, upto):
        pos, end = self._pos, len(self._buf)
        lengths = [(i, len(" ".join(self._buf[pos:i].split()))) for i in range(pos, end + 1)]
        self._clause_at = next((i for i, n in lengths if n >= self.first_clause_min_chars), None)
        self._overlong_at = next((i for i, n in lengths if n > self.max_chars), None)
        self._known_to = end


# Short texts of what the rules look at, run together, cut often, against small limits: where
# the bookkeeping across chunks, over-long cuts and endings that wait for more text meet.
PIECES = ["Hello", "ab", "x" * 15, "Dr.", "a.m.", "42.", "!!", "...", ",", "“yes,”", "(", ")", "-", " ", "  ",
          "\n", "\n-", "\n1", "\n\n"]
dense_texts = st.one_of(st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
                        st.lists(st.text(alphabet="aB.!,”)", min_size=1, max_size=6), max_size=8).map(" ".join),
                        st.text(alphabet="aB1 .!?…,;:—-\n\"'“”)(@/", max_size=60))
small_options = st.fixed_dictionaries({"first_clause_min_chars": st.integers(0, 25), "max_chars": st.integers(1, 20)})


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.tuples(texts, options), st.tuples(dense_texts, small_options)), st.data())
def test_incremental_segmenting_matches_brute_force(case, data):
    text, kwargs = case
    every = data.draw(st.integers(0, 3))  # 1 to 3: a chunk every so many characters, as a token stream
    cuts = range(0, len(text), every) if every else data.draw(st.lists(st.integers(0, len(text)), max_size=12))
    chunks = chunked(text, cuts)
    fast, reference = SentenceSegmenter(**kwargs), BruteForce(**kwargs)
    for _ in range(2):  # a second reply on the same objects starts clean
        assert [fast.add_chunk(c) for c in chunks] == [reference.add_chunk(c) for c in chunks]
        assert fast.finish() == reference.finish()


# --- A first segment of about N words (first_words) ---------------------------------------------------

FIRST_WORDS_CASES = [
    ("word cut", 2, "Your appointment is booked for Monday, June 9th at 10:15 AM.",
     ["Your appointment", "is booked for Monday, June 9th at 10:15 AM."]),
    ("clause mark two words on is preferred", 4, "Your appointment is booked for Monday, June 9th at 10:15 AM.",
     ["Your appointment is booked for Monday,", "June 9th at 10:15 AM."]),
    ("clause mark a word before", 2, "Goodbye, and have a wonderful day.", ["Goodbye,", "and have a wonderful day."]),
    ("on a tie the later clause mark", 4, "Yes sir, we have three openings, all of them in the morning.",
     ["Yes sir, we have three openings,", "all of them in the morning."]),
    ("clause mark too far", 2, "We have two openings left this week: Wednesday or Friday.",
     ["We have", "two openings left this week: Wednesday or Friday."]),
    ("not beside a number", 4, "Your balance of $1,250 is due on the 1st of next month.",
     ["Your balance of $1,250 is", "due on the 1st of next month."]),
    ("not inside a time", 6, "Our office is open from 8 AM to 6 PM, Monday through Friday.",
     ["Our office is open from 8 AM", "to 6 PM, Monday through Friday."]),
    ("not between a date and its year", 6, "Your visit is on June 9, 2026 at noon, see you.",
     ["Your visit is on June 9, 2026 at", "noon, see you."]),
    ("not after a title", 3, "Please ask Dr. Lee about the results today.",
     ["Please ask Dr. Lee", "about the results today."]),
    ("not after an initial", 1, "J. Smith will call you back today.", ["J. Smith", "will call you back today."]),
    ("not inside a name", 6, "The clinic is located at 221 Baker Street on the second floor.",
     ["The clinic is located at 221 Baker Street", "on the second floor."]),
    ("a URL stays whole", 2, "Visit www.example.com/path for all the details.",
     ["Visit www.example.com/path", "for all the details."]),
    ("no tiny remainder", 2, "Thank you for calling. How can I help?", ["Thank you for calling.", "How can I help?"]),
    ("nowhere to cut", 2, "Call 555-0142 or 555-0199 at 9 AM.", ["Call 555-0142 or 555-0199 at 9 AM."]),
    ("only the first segment", 2, "Sure thing. I can look up your account right now for you.",
     ["Sure thing.", "I can look up your account right now for you."]),
    ("a list item counts its words", 1, "- Billing questions go to the second desk.",
     ["- Billing", "questions go to the second desk."]),
]


@pytest.mark.parametrize("words,text,expected", [c[1:] for c in FIRST_WORDS_CASES],
                         ids=[c[0] for c in FIRST_WORDS_CASES])
def test_first_segment_of_about_n_words(words, text, expected):
    assert split_text(text, first_words=words) == expected


def test_first_words_within_max_chars():
    assert split_text("alpha beta gamma delta epsilon zeta eta", first_words=4, max_chars=20) == \
        ["alpha beta gamma", "delta epsilon zeta", "eta"]


def test_first_words_must_be_positive():
    with pytest.raises(ValueError):
        SentenceSegmenter(first_words=0)


def test_first_words_waits_for_the_words_that_decide_the_cut():
    tokens = re.findall(r"\s*\S+", "Please remember to bring your insurance card and a photo ID. Thanks.")
    per_chunk, final = stream(tokens, first_words=2)
    emitted = [(tokens[i], segs) for i, segs in enumerate(per_chunk) if segs]
    # Words 3 to 7 show no clause mark nor end; "card" is known whole once the space after it comes.
    assert emitted == [(" and", ["Please remember"]),
                       (" ID.", ["to bring your insurance card and a photo ID."]),
                       (" Thanks.", ["Thanks."])]
    assert final == []


def test_each_reply_gets_its_own_first_words_cut():
    segmenter = SentenceSegmenter(first_words=2)
    assert segmenter.add_chunk("Let me transfer you to billing. Please hold on for me.") == \
        ["Let me", "transfer you to billing.", "Please hold on for me."]
    assert segmenter.finish() == []
    assert segmenter.add_chunk("Your order ships out on Friday morning.") == ["Your order", "ships out on Friday morning."]


@pytest.mark.parametrize("words,text", [c[1:3] for c in FIRST_WORDS_CASES], ids=[c[0] for c in FIRST_WORDS_CASES])
def test_first_words_token_by_token_and_character_by_character(words, text):
    """Character by character except after a sentence's end, which a chunk's end may settle (see add_chunk)."""
    whole_chars = [c for c in range(len(text)) if not CHUNK_FINAL_AMBIGUITY.search(text[:c])]
    for chunks in (re.findall(r"\s*\S+", text), chunked(text, whole_chars)):
        per_chunk, final = stream(chunks, first_words=words)
        assert [s for segs in per_chunk for s in segs] + final == split_text(text, first_words=words)


# Long sentences of plain words with clause marks, numbers, titles and names among them: where the cut is weighed.
sentences = st.lists(st.sampled_from(["word", "me", "you", "it", "Name", "call,", "wait;", "—", "-", "42", "Dr.", "J.",
                                      "end.", "\n\n"]), max_size=20).map(" ".join)
words_texts = st.one_of(texts, sentences)
words_options = st.fixed_dictionaries(
    {"first_words": st.integers(1, 8), "max_chars": st.one_of(st.integers(1, 30), st.integers(31, 300))})
# The properties above, with first_words: their bodies run on these inputs.


@settings(max_examples=400, deadline=None)
@given(words_texts, words_options)
def test_first_words_keeps_every_word(text, kwargs):
    test_split_text_keeps_every_word.hypothesis.inner_test(text, kwargs)


@settings(max_examples=400, deadline=None)
@given(words_texts, words_options, st.data())
def test_first_words_streaming_matches_whole_text(text, kwargs, data):
    test_streaming_matches_whole_text.hypothesis.inner_test(text, kwargs, data)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.tuples(words_texts, words_options),
                 st.tuples(dense_texts, st.fixed_dictionaries({"first_words": st.integers(1, 4),
                                                               "max_chars": st.integers(1, 20)}))), st.data())
@pytest.mark.slow
def test_first_words_incremental_matches_brute_force(case, data):
    test_incremental_segmenting_matches_brute_force.hypothesis.inner_test(case, data)
