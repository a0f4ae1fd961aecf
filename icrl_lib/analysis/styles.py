"""How run names look in figures: a method in its colour (:data:`icrl_lib.paper.methods.METHODS`), its variants
dashed in that colour, other names from a palette, and no two lines of one figure alike."""
from __future__ import annotations

from collections.abc import Sequence

from icrl_lib.paper.methods import METHODS, base_method

# Names that are no method's (a strategy this version names no method for), in sorted order within a figure.
OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
                "#7b4173", "#aec7e8", "#ffbb78", "#98df8a")


DASHES = ("dash", "dot", "dashdot", "longdash", "longdashdot")


def styles(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Colour and dash of each of ``names`` drawn together in one figure, all distinct, and the same for the same set
    in every figure: a method is solid in its colour; its variants (sorted) are dashed in that colour, a darker then a
    lighter shade after every five; other names take :data:`OTHER_COLORS` in sorted order, dashed after a round."""
    names = list(dict.fromkeys(names))
    out: dict[str, tuple[str, str]] = {}
    for i, name in enumerate(sorted(n for n in names if base_method(n) is None)):
        rounds, k = divmod(i, len(OTHER_COLORS))
        out[name] = (OTHER_COLORS[k], "solid" if rounds == 0 else DASHES[(rounds - 1) % len(DASHES)])
    for method in METHODS:
        if method.display in names:
            out[method.display] = (method.color, "solid")
        variants = sorted(n for n in names if base_method(n) is method and n != method.display)
        for i, name in enumerate(variants):
            rounds, k = divmod(i, len(DASHES))
            out[name] = (_shade(method.color, rounds), DASHES[k])
    return out


def _shade(color: str, rounds: int) -> str:
    """``color`` as is, then 40% darker, then 40% lighter (cycling): variants past the fifth dash stay distinct."""
    factor = (0.0, -0.4, 0.4)[rounds % 3]
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    rgb = [round(c * (1 + factor)) if factor < 0 else round(c + (255 - c) * factor) for c in rgb]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def color_of(name: str, names: Sequence[str] = ()) -> str:
    """``name``'s colour among ``names`` drawn with it (:func:`styles`); a method's colour is the same in any set."""
    return styles([*names, name])[name][0]


def dash_of(name: str, names: Sequence[str] = ()) -> str:
    """``name``'s line style among ``names`` drawn with it (:func:`styles`): solid for a method as defined."""
    return styles([*names, name])[name][1]
