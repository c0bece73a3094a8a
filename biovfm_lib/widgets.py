"""Clickable views for the notebooks: pick from a few controls, see the figure or table redrawn.

:func:`explore` shows the default choice as an ordinary cell output first, so a headless run
(papermill, ``biovfm run``) and its HTML report hold exactly what a static cell would have
shown, and the widgets are only an extra for a person in JupyterLab. Later choices replace
that output in place through its display id. This is why ``render`` *returns* what to show
instead of displaying it: output written from a widget callback has no cell to go to, and
ipywidgets' own ``interact`` keeps even the first rendering inside an ``Output`` widget, which
a headless run stores as widget state, not as an output a report shows.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import DisplayHandle, Markdown, display
from matplotlib.figure import Figure


@dataclass
class Exploration:
    """A live view: its controls, and the display slot that every choice is rendered into."""

    render: Callable[..., Any]
    controls: dict[str, widgets.ValueWidget]
    handle: DisplayHandle = field(default_factory=DisplayHandle)
    shown: Any = None  # what the slot holds: the last rendering, or why it failed

    def choice(self) -> dict[str, Any]:
        """The current value of every control, by the keyword ``render`` takes it as."""
        return {name: control.value for name, control in self.controls.items()}

    def show(self) -> None:
        """Render the current choice into the slot (the first call creates the slot)."""
        shown = self.render(**self.choice())
        if shown is None:
            raise TypeError(f"{getattr(self.render, '__name__', self.render)!r} returned None: "
                            "return the figure, table or text to show instead of displaying it")
        self._put(shown)
        if isinstance(shown, Figure):  # else pyplot shows it again and keeps every re-render
            plt.close(shown)

    def _put(self, shown: Any) -> None:
        if self.shown is None:
            self.handle.display(shown)
        else:
            self.handle.update(shown)
        self.shown = shown

    def _changed(self, _change: dict) -> None:
        # A callback's exception would only reach the kernel's log: show it where the view was.
        try:
            self.show()
        except Exception as exc:  # noqa: BLE001 - any failure of a user's render
            self._put(Markdown(f"**{type(exc).__name__}** with {self.choice()}: {exc}"))


def pick_many(options: Iterable[str], value: Iterable[str] | None = None,
              rows: int = 6) -> widgets.SelectMultiple:
    """A multiple choice (ctrl/shift-click), all ``options`` chosen unless ``value`` says less,
    so the default view compares everything."""
    options = list(options)
    return widgets.SelectMultiple(options=options, rows=min(rows, max(len(options), 1)),
                                  value=tuple(options if value is None else value))


def explore(render: Callable[..., Any], **choices: Any) -> Exploration:
    """Display controls for ``choices`` and ``render(**choice)`` below them, redrawn on change.

    Each keyword names an argument of ``render`` and says how to choose it, as ipywidgets'
    ``interact`` abbreviations do: a list gives a dropdown defaulting to its first item, a
    ``(min, max[, step])`` tuple a slider, a bool a checkbox, a widget itself (e.g.
    :func:`pick_many`) is used as given. ``render`` returns what to show: a matplotlib
    figure, a DataFrame, Markdown, anything IPython can display. Without a widget front end
    only the default view appears, as a plain output.
    """
    controls = {name: _control(name, choice) for name, choice in choices.items()}
    view = Exploration(render, controls)
    display(widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap")))
    view.show()
    for control in controls.values():
        control.observe(view._changed, names="value")
    return view


def _control(name: str, choice: Any) -> widgets.ValueWidget:
    control = widgets.interactive.widget_from_abbrev(choice)
    if not isinstance(control, widgets.ValueWidget):  # None, or ipywidgets.fixed
        raise TypeError(f"cannot make a control for {name}={choice!r}: give a list of options, "
                        "a (min, max, step) tuple, a bool or a widget")
    if not control.description:
        control.description = name
        control.style.description_width = "initial"
    return control
