"""Color names to RGB, for the color editor's prior.

The reference hard-codes ~245 named colors. Here the tables come from matplotlib (a dependency
already): the 148 CSS4/X11 names first, then the 949 names of the xkcd color survey, which cover
the everyday names an LLM writes ("burgundy", "mustard yellow", "olive green"). A name that is in
neither table gets a deterministic color from its hash, and the source of every color is returned
so the stage can record it on the row.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

RGB = tuple[int, int, int]

# Compel weighting such as "(crimson)1.3" (the reference's attribute syntax) is not part of a name.
_COMPEL = re.compile(r"\(([^()]*)\)[\d.]*")


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, str], dict[str, str]]:
    from matplotlib.colors import CSS4_COLORS, XKCD_COLORS

    css = {name.lower(): hexa for name, hexa in CSS4_COLORS.items()}
    xkcd = {name.removeprefix("xkcd:"): hexa for name, hexa in XKCD_COLORS.items()}
    return css, xkcd


def _hex_to_rgb(hexa: str) -> RGB:
    return int(hexa[1:3], 16), int(hexa[3:5], 16), int(hexa[5:7], 16)


def normalize(name: str) -> str:
    name = _COMPEL.sub(r"\1", name).lower()
    return " ".join(re.sub(r"[-_]", " ", name).split())


def lookup(name: str) -> tuple[RGB, str]:
    """``(rgb, source)``; ``source`` is ``css4:<name>``, ``xkcd:<name>`` or ``hash``.

    Tries the whole name, then drops leading words ("deep burgundy" -> "burgundy"), because the
    head noun of a color phrase is at its end.
    """
    css, xkcd = _tables()
    words = normalize(name).split()
    for start in range(len(words)):
        phrase = " ".join(words[start:])
        if phrase.replace(" ", "") in css:  # CSS writes "light blue" as "lightblue"
            return _hex_to_rgb(css[phrase.replace(" ", "")]), f"css4:{phrase}"
        if phrase in xkcd:
            return _hex_to_rgb(xkcd[phrase]), f"xkcd:{phrase}"
    digest = hashlib.sha256(normalize(name).encode()).digest()
    return (digest[0], digest[1], digest[2]), "hash"
