"""The KFP client's pure parts; its HTTP calls are tested in test_kubeflow_cli.py."""

from __future__ import annotations

import pytest

from pipeline import kfp_client


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 3 * * *", "0 0 3 * * *"),
        ("*/15 * * * 1-5", "0 */15 * * * 1-5"),
        ("30 0 3 * * *", "30 0 3 * * *"),
        ("  0   3 1 * *  ", "0 0 3 1 * *"),
    ],
)
def test_cron_gets_kfp_seconds_field(cron, expected):
    assert kfp_client.normalize_cron(cron) == expected


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 3 * *", "must have 5 fields"),
        ("0 0 3 * * * 2030", "must have 5 fields"),
        ("61 3 * * *", "minute must be in 0-59"),
        ("0 24 * * *", "hour must be in 0-23"),
        ("0 3 * * $", "characters cron does not use"),
        ("", "got 0"),
    ],
)
def test_bad_cron_is_refused(cron, message):
    with pytest.raises(ValueError, match=message):
        kfp_client.normalize_cron(cron)


