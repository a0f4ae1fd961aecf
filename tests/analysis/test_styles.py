"""How run names look in figures: methods keep their colour, variants are dashed in it, no two alike."""
from __future__ import annotations

import pytest

from icrl_lib.analysis import styles
from icrl_lib.paper import methods


def test_order_and_colours_are_fixed():
    names = ["approximate ICRL", "explorative ICRL, p_keep=0.5", "zero-shot", "explorative ICRL", "ICL", "other"]
    assert methods.method_order(names) == ["zero-shot", "ICL", "explorative ICRL", "explorative ICRL, p_keep=0.5",
                                           "approximate ICRL", "other"]
    assert styles.color_of("explorative ICRL, p_keep=0.5") == styles.color_of("explorative ICRL") == "#1f77b4"
    assert styles.dash_of("explorative ICRL", names) == "solid"
    assert styles.dash_of("explorative ICRL, p_keep=0.5", names) == "dash"
    assert styles.color_of("other") == styles.color_of("other") in styles.OTHER_COLORS
    assert len({m.color for m in methods.METHODS}) == len(methods.METHODS)


@pytest.mark.parametrize("family", ["reward_ablations", "context_window", "exploration", "approximate", "main"])
def test_names_drawn_together_get_distinct_styles(family):
    """Every family figure draws all its arms at once: no two may share colour and dash (12 reward ablations once
    shared 8 hashed colours; the paper's 9 naive temperatures shared 5 dashes). Methods keep their colour."""
    from icrl_lib.paper import experiments

    fam = experiments.family(family)  # a figure draws its runs' names (methods.name_run), one per arm
    names = methods.method_order([methods.name_run({**a.fields, "task_name": "clinic150" + fam.task_suffix})
                                  for a in fam.arms()])
    looks = styles.styles(names)
    assert len(set(looks.values())) == len(names), looks
    for name in names:
        method = methods.base_method(name)
        if method is not None and name == method.display:
            assert looks[name] == (method.color, "solid")
    assert styles.styles(list(reversed(names))) == looks  # the same set looks the same in every figure
    assert all(styles.color_of(n, names) == looks[n][0] for n in names)
