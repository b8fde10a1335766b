"""The controller's pure rules: which IDs a run accepts, who replaces a blocked region."""

from __future__ import annotations

from pathlib import Path

import pytest
from scrapy.settings import Settings

from crawlers.config import HydraConfig, HydraConfigError
from crawlers.models.regions import Region
from crawlers.services.controller.app import BadInput, clean_ids, parse_body
from crawlers.services.controller.regions import (
    ACTIVE,
    IDLE,
    QUARANTINED,
    RegionState,
    replacements,
)


def _config(**settings: object) -> HydraConfig:
    return HydraConfig.from_settings(Settings(settings))


def test_ids_are_trimmed_and_deduplicated_in_order() -> None:
    assert clean_ids([" 3", "1 ", "3", "2", "1"], _config()) == ["3", "1", "2"]


@pytest.mark.parametrize(
    ("ids", "named"),
    [
        (["1", " ", "2"], "ids[1] is empty"),
        (["1", "x" * 65], "ids[1]"),
        (["1", ".."], "ids[1]"),
        (["a\x00b"], "ids[0]"),
        ([1], "ids[0] is not a string"),
    ],
)
def test_a_bad_id_is_refused_by_position(ids: list[object], named: str) -> None:
    with pytest.raises(BadInput) as caught:
        clean_ids(ids, _config())
    assert caught.value.status_code == 422
    assert named in str(caught.value.detail)


def test_too_many_ids_are_refused_but_duplicates_do_not_count() -> None:
    config = _config(HYDRA_MAX_RUN_IDS=3)
    assert clean_ids(["1", "2", "3", "1", "2"], config) == ["1", "2", "3"]
    with pytest.raises(BadInput, match="HYDRA_MAX_RUN_IDS"):
        clean_ids(["1", "2", "3", "4"], config)


@pytest.mark.parametrize(
    ("body", "content_type", "ids"),
    [
        (b'{"ids": "1,2,3"}', "application/json", ["1", "2", "3"]),
        (b'{"ids": ["1", "2"]}', "application/json", ["1", "2"]),
        (b"1,2\n3", "text/plain; charset=utf-8", ["1", "2", "3"]),
        (b"", "application/json", None),
        (b"{}", "application/json", None),
        (b'{"ids": null}', "application/json", None),
    ],
)
def test_bodies_that_name_ids_or_ask_for_the_warehouse(
    body: bytes, content_type: str, ids: list[str] | None
) -> None:
    assert parse_body(body, content_type) == ids


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b'{"ids": 5}', b'{"ids": ["1"], "extra": 1}', b"\xff\xfe", b"{nope", b"[" * 5000],
)
def test_malformed_bodies_are_422(body: bytes) -> None:
    with pytest.raises(BadInput) as caught:
        parse_body(body, "application/json")
    assert caught.value.status_code == 422


def _regions() -> list[Region]:
    return [
        Region(name="a", neighbours=["b", "c", "d"]),
        Region(name="b", neighbours=["a"]),
        Region(name="c", neighbours=["a"]),
        Region(name="d", neighbours=["a"]),
    ]


def _states(**states: str) -> dict[str, RegionState]:
    return {name: RegionState(name, state) for name, state in states.items()}


def test_two_idle_neighbours_replace_a_blocked_region() -> None:
    states = _states(a=ACTIVE, b=QUARANTINED, c=IDLE, d=IDLE)
    assert replacements(_regions(), states, "a", max_active=8) == ["c", "d"]


def test_growth_is_capped_by_max_active_regions() -> None:
    states = _states(a=ACTIVE, b=ACTIVE, c=IDLE, d=IDLE)
    assert replacements(_regions(), states, "a", max_active=2) == ["c"]  # b + one
    assert replacements(_regions(), states, "a", max_active=1) == []


def test_no_neighbour_free_means_no_replacement() -> None:
    states = _states(a=ACTIVE, b=ACTIVE, c=QUARANTINED, d=ACTIVE)
    assert replacements(_regions(), states, "a", max_active=8) == []


def test_regions_setting_is_validated_and_the_first_starts_by_default() -> None:
    config = _config(HYDRA_REGIONS='[{"name": "eu", "neighbours": ["us"]}, {"name": "us"}]')
    assert [(r.name, r.start) for r in config.regions] == [("eu", True), ("us", False)]
    assert config.region_queue_key("eu") == "hydra:prices:batches:eu"
    assert config.region_queue_key("default") == "hydra:prices:batches"
    for bad in (
        '[{"name": "eu", "neighbours": ["mars"]}]',
        '[{"name": "e u"}]',
        '[{"name": "eu"}, {"name": "eu"}]',
        '[{"name": "eu", "egress": "file:///etc/passwd"}]',
        '[{"name": "eu", "scrapyd": "http://admin:pw@node:6800"}]',
    ):
        with pytest.raises(HydraConfigError):
            _config(HYDRA_REGIONS=bad)


@pytest.mark.parametrize("name", ["a:b", "", "x" * 65, "eu west", "{eu}"])
def test_a_worker_region_name_is_plain(name: str) -> None:
    with pytest.raises(HydraConfigError, match="HYDRA_REGION"):
        _config(HYDRA_REGION=name)


def test_regions_from_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "regions.yaml"
    path.write_text("- name: eu\n  neighbours: [us]\n- name: us\n  start: true\n")
    config = _config(HYDRA_REGIONS=str(path))
    assert [(r.name, r.start) for r in config.regions] == [("eu", False), ("us", True)]


def test_api_keys_never_appear_in_setting_errors() -> None:
    with pytest.raises(HydraConfigError) as caught:
        _config(HYDRA_API_KEYS='["s3cret-key", {"not": "a string"}]')
    assert "HYDRA_API_KEYS" in str(caught.value)
    assert "s3cret" not in str(caught.value)
