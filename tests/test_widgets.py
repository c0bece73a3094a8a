"""Widget views render their default without a front end and re-render on a new choice."""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from biovfm_lib.widgets import explore, pick_many

TABLE = pd.DataFrame({"task": ["a", "a", "b"], "metric": ["auc", "mcc", "auc"],
                      "value": [0.9, 0.5, 0.7]})


def test_default_choice_is_rendered_and_a_new_choice_re_renders(capsys):
    calls = []

    def rows(task: str, metric: str, tasks: tuple[str, ...]) -> pd.DataFrame:
        calls.append((task, metric, tasks))
        return TABLE[(TABLE.task == task) & (TABLE.metric == metric)]

    view = explore(rows, task=["a", "b"], metric=["auc", "mcc"], tasks=pick_many(["a", "b"]))
    assert calls == [("a", "auc", ("a", "b"))]  # first options; every option of pick_many
    assert view.shown.value.tolist() == [0.9]
    assert "0.9" in capsys.readouterr().out  # no front end: the default goes to plain output

    view.controls["metric"].value = "mcc"
    assert calls[-1] == ("a", "mcc", ("a", "b"))
    assert view.shown.value.tolist() == [0.5]
    view.controls["task"].value = "b"
    view.controls["tasks"].value = ("b",)
    assert calls[-2:] == [("b", "mcc", ("a", "b")), ("b", "mcc", ("b",))]
    assert view.shown.empty  # task b has no mcc: an empty table, shown as such
    assert view.choice() == {"task": "b", "metric": "mcc", "tasks": ("b",)}


def test_controls_follow_interact_abbreviations():
    slider = widgets.IntSlider(value=3, min=0, max=5, description="k")
    view = explore(lambda n, k, flag: f"{n} {k} {flag}", n=(1, 9, 2), k=slider, flag=True)
    assert view.controls["k"] is slider
    assert isinstance(view.controls["n"], widgets.IntSlider)
    assert view.controls["n"].description == "n"  # named after its argument
    assert view.shown == f"{view.controls['n'].value} 3 True"
    with pytest.raises(TypeError, match="control for x=None"):
        explore(lambda x: x, x=None)


def test_figures_are_closed_after_showing():
    def draw(color: str) -> plt.Figure:
        fig, ax = plt.subplots()
        ax.plot([0, 1], color=color)
        return fig

    before = len(plt.get_fignums())
    view = explore(draw, color=["red", "blue"])
    view.controls["color"].value = "blue"
    assert view.shown.axes[0].lines[0].get_color() == "blue"
    assert len(plt.get_fignums()) == before  # neither rendering is left for pyplot to show


def test_render_must_return_what_to_show_and_later_errors_are_shown_in_place():
    with pytest.raises(TypeError, match="returned None"):
        explore(lambda choice: None, choice=["a"])

    def fragile(choice: str) -> str:
        if choice == "bad":
            raise ValueError("no data for bad")
        return choice

    view = explore(fragile, choice=["good", "bad"])
    view.controls["choice"].value = "bad"  # a callback must not raise into the kernel
    assert "ValueError" in view.shown.data and "no data for bad" in view.shown.data
    view.controls["choice"].value = "good"
    assert view.shown == "good"
