"""Deployment scoping with real processes (issue 16): two deployments share one sandbox account.

Deployment A (``chaosa``) and deployment B (``chaosb``, its own SQLite database) each run their
own web server, django-q2 worker and safety loop against the same sandbox cloud, each rents
machines, and each gets an orphan labelled with its own id. Both reconcile for several orphan
grace periods (``tools.chaos --deployments-only``, ``deployments_phase``). Neither may touch
the other's machines (no destroy attempt at the sandbox, none gone), each must destroy its own
orphan, each lists the other's machines, and when both are done nothing is left running.

On the old code both labelled ``shopper-<uuid>``: each saw the other's machines as orphans and
destroyed them after the grace (``touched_by_other_deployment`` = every machine); the run fails
there (it has no ``--deployments-only`` either).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_two_deployments_on_one_account_never_touch_each_others_machines():
    run = subprocess.run(
        [sys.executable, "-m", "tools.chaos", "--deployments-only", "--deployment-rentals", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert "CHAOS OK" in run.stdout, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads(run.stdout[run.stdout.index("{") : run.stdout.rindex("}") + 1])
    assert report["deployment_ids"] == ["chaosa", "chaosb"]
    assert report["deployment_rentals"] == [2, 2]
    active = report["deployment_active"]
    assert min(active) > 0
    assert report["deployment_still_active"] == active
    assert report["touched_by_other_deployment"] == 0
    assert report["cross_orphan_alerts"] == 0
    assert report["own_orphans_destroyed"] == 2
    assert report["foreign_listed"] == active[::-1]
    assert report["ghosts"] == [0, 0]
    assert report["deployment_leaks"] == 0
