"""State survives a sandbox crash (SIGKILL) and a graceful restart."""

from __future__ import annotations

from pathlib import Path

import requests

from inventory.sandbox.testing import running_sandbox

from ._util import (
    AUTH,
    make_key,
    marked_pids,
    port_open,
    ssh,
    td_body,
    td_create,
    td_key_runcmd,
    td_pick,
    td_ssh_port,
    vast_create,
    vast_get,
    vast_search,
    wait_for,
)


def test_state_survives_crash_and_restart(tmp_path: Path):
    with running_sandbox(tmp_path, boot_delay=0) as sb:
        vast, td = sb.vastai_url, sb.tensordock_url
        before = vast_search(vast, {"order": [["dph_total", "asc"]], "limit": 50})
        ask = before[0]["id"]
        key, pub = make_key(tmp_path)
        iid = vast_create(
            vast, ask, label="shopper-crash", onstart="echo booted >> /root/boots; sleep 600"
        ).json()["new_contract"]
        requests.post(f"{vast}/api/v0/instances/{iid}/ssh/", json={"ssh_key": pub}, headers=AUTH)
        port = wait_for(
            lambda: (i := vast_get(vast, iid)) and i["actual_status"] == "running" and i["ssh_port"]
        )
        location_id, v0 = td_pick(td)
        tid = td_create(td, td_body(location_id, v0, ssh_key=pub, cloud_init=td_key_runcmd(pub))).json()[
            "data"
        ]["id"]
        td_port = td_ssh_port(
            wait_for(
                lambda: (
                    (d := requests.get(f"{td}/instances/{tid}", headers=AUTH).json())["status"] == "running"
                    and d
                )
            )
        )
        wait_for(lambda: ssh(port, key, "cat /root/boots").stdout == "booted\n")
        # The start-up shell forks `sleep` right after the echo: wait for it rather than race it.
        node_pids = wait_for(lambda: marked_pids(sb, "vastai", iid))
        assert node_pids

        sb.crash()
        assert not port_open(port)
        sb.start()  # same port, same state file

        assert vast_get(vast, iid)["label"] == "shopper-crash"
        listed = requests.get(f"{vast}/api/v1/instances/", headers=AUTH).json()["instances"]
        assert [i["id"] for i in listed] == [iid]
        assert requests.get(f"{td}/instances", headers=AUTH).json()["data"]["instances"][0]["id"] == tid
        assert vast_get(vast, iid)["ssh_port"] == port  # SSH re-opened on the persisted port
        out = ssh(port, key, "nvidia-smi -L; cat /root/boots")
        assert out.returncode == 0 and out.stdout.endswith("booted\n")  # onstart did not run again
        assert ssh(td_port, key, "true", user="user").returncode == 0
        assert marked_pids(sb, "vastai", iid) == node_pids  # the machine's processes outlived the API
        # same catalog, the rented ask still rented
        after = vast_search(vast, {"order": [["dph_total", "asc"]], "limit": 50})
        expected = [o["id"] for o in before if o["id"] != ask][:49]
        assert [o["id"] for o in after][:49] == expected
        assert "no_such_ask" in vast_create(vast, ask).json()["msg"]

        sb.restart()  # graceful this time
        assert ssh(port, key, "true").returncode == 0
        assert requests.delete(f"{vast}/api/v0/instances/{iid}/", headers=AUTH).status_code == 200
        wait_for(lambda: not marked_pids(sb, "vastai", iid), timeout=5)
        assert [i["id"] for i in sb.instances()] == [tid]
