"""The lifecycle table every stateful thing checks its changes against: its edges are
the only changes allowed, each said once, each with what takes it."""

from __future__ import annotations

import enum

import pytest

from passenger.common.lifecycle import IllegalTransition, Transitions


class Light(enum.Enum):
    OFF = "off"
    ON = "on"
    BROKEN = "broken"


def table() -> Transitions[Light]:
    return Transitions("light", [
        (Light.OFF, Light.ON, "switched on"),
        (Light.ON, Light.OFF, "switched off"),
        (Light.ON, Light.BROKEN, "the bulb burnt out"),
    ])


def test_an_edge_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="light: edge OFF -> ON given twice"):
        Transitions("light", [(Light.OFF, Light.ON, "switched on"),
                              (Light.OFF, Light.ON, "switched on again")])


def test_check_passes_an_edge_and_raises_for_anything_else() -> None:
    lights = table()
    lights.check(Light.OFF, Light.ON)
    assert lights.allows(Light.ON, Light.BROKEN)
    for old, new in [(Light.BROKEN, Light.ON), (Light.OFF, Light.BROKEN),
                     (Light.OFF, Light.OFF)]:
        assert not lights.allows(old, new)
        with pytest.raises(IllegalTransition,
                           match=f"^light: no edge {old.name} -> {new.name}$"):
            lights.check(old, new)


def test_an_illegal_transition_is_a_runtime_error() -> None:
    assert issubclass(IllegalTransition, RuntimeError)  # a bug: callers never catch it


def test_describe_lists_every_edge_with_its_label_in_order() -> None:
    assert table().describe() == ["OFF -> ON: switched on", "ON -> OFF: switched off",
                                  "ON -> BROKEN: the bulb burnt out"]
