"""The English voices shipped in voices/ are found without a voices folder, and a voices folder overrides them."""
from __future__ import annotations

import numpy as np

from kokoro_daemon.voices import SHIPPED_VOICES_DIR, VoiceLibrary, load_pack_file

SHIPPED = ("af_sky", "af_heart", "af_bella", "am_adam", "am_michael", "bf_emma", "bm_george")


def test_the_shipped_voices_are_found_without_a_voices_folder():
    library = VoiceLibrary()
    available = library.available()
    for name in SHIPPED:
        assert available[name] == str(SHIPPED_VOICES_DIR)
        np.testing.assert_array_equal(library.load(name).pack, load_pack_file(SHIPPED_VOICES_DIR / f"{name}.pt"))


def test_a_voices_folder_overrides_a_shipped_voice(tmp_path):
    bella = load_pack_file(SHIPPED_VOICES_DIR / "af_bella.pt")
    np.save(tmp_path / "af_sky.npy", bella)
    library = VoiceLibrary(tmp_path)
    np.testing.assert_array_equal(library.load("af_sky").pack, bella)
    assert library.available()["af_sky"] == str(tmp_path) and library.available()["am_adam"] == str(SHIPPED_VOICES_DIR)
