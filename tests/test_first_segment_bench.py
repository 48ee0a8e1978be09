"""The first-segment benchmark's arithmetic: the silences a caller hears, and the choice of policy (no model)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from first_segment import decide, playout_gaps  # noqa: E402


def test_a_segment_that_takes_longer_than_the_audio_before_it_is_heard_as_silence():
    synth_s = {"a": 1.0, "b": 2.5, "c": 0.5}
    audio_s = {"a": 1.0, "b": 3.0, "c": 1.0}
    # a is ready at 1.0 and plays to 2.0; b is ready at 3.5 (1.5 s of silence) and plays to 6.5; c is ready at 4.0.
    assert playout_gaps(["a", "b", "c"], synth_s, audio_s) == [1.5, 0.0]
    assert playout_gaps(["a"], synth_s, audio_s) == []


def timing(first_s, rounds, texts_with_gap=0):
    return {"first_segment_s_p50": first_s, "ratio_to_clause_per_round": rounds, "texts_with_gap": texts_with_gap}


@pytest.mark.parametrize("words2_loss,chosen,within_noise", [
    (0.02, "words:4", ["words:6"]),   # the fastest loses words on one voice: the next fastest that does not
    (0.004, "words:2", []),           # a loss within the tolerance is allowed
])
def test_the_fastest_policy_that_loses_no_words_is_chosen(words2_loss, chosen, within_noise):
    times = {"clause": timing(1.0, [1.0, 1.0], 1), "words:2": timing(0.5, [0.45, 0.55], 5),
             "words:4": timing(0.7, [0.6, 0.8]), "words:6": timing(0.8, [0.75, 0.9])}
    wer = {voice: {"clause": {"phrase": 0.03}, "words:2": {"phrase": 0.03}, "words:4": {"phrase": 0.034},
                   "words:6": {"phrase": 0.02}} for voice in ("af_sky", "am_adam")}
    wer["am_adam"]["words:2"]["phrase"] += words2_loss
    decision = decide(times, wer)
    assert (decision["chosen"], decision["within_noise_of_chosen"]) == (chosen, within_noise)
    assert decision["wer_loss"]["words:2"]["am_adam"] == pytest.approx(words2_loss)
    assert decision["adds_silence"] == ["words:2"]
