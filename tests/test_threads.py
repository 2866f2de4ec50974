"""The CLI tames OpenMP's spin-wait before torch loads, unless the user chose a wait policy.

The code: llmctl/runtime/threads.py.
"""

from __future__ import annotations

import os

import pytest


@pytest.mark.parametrize(
    ("user_env", "expected"),
    [({}, "10000"), ({"GOMP_SPINCOUNT": "500"}, "500"), ({"OMP_WAIT_POLICY": "ACTIVE"}, None)],
)
def test_cli_sets_spin_count_unless_user_chose(cli, monkeypatch, user_env, expected):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    for key, value in user_env.items():
        monkeypatch.setenv(key, value)
    res = cli("models", "list")
    assert res.exit_code == 0, res.stderr
    assert os.environ.get("GOMP_SPINCOUNT") == expected
