"""``rvc_ray.cluster``: the Ray Data start-up workaround (no Ray cluster needed)."""

from __future__ import annotations

import pytest

from rvc_ray.cluster import RAY_DATA_LIMITS_REFRESH_S, shorten_ray_data_limits_refresh


def test_limits_refresh_is_shortened_never_lengthened(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.data._internal.execution.resource_manager import ResourceManager

    monkeypatch.setattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", 1)
    assert shorten_ray_data_limits_refresh() is True
    assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == RAY_DATA_LIMITS_REFRESH_S

    monkeypatch.setattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", 0.01)
    assert shorten_ray_data_limits_refresh() is True
    assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == 0.01


def test_limits_refresh_leaves_a_changed_ray_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.data._internal.execution.resource_manager import ResourceManager

    monkeypatch.delattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S")
    assert shorten_ray_data_limits_refresh() is False
    assert not hasattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S")

    monkeypatch.setattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", "1s", raising=False)
    assert shorten_ray_data_limits_refresh() is False
    assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == "1s"
