"""The waypoint gets its own certificate from the real CA (istiod_lite's, in process) with its pod's
token and no impersonation, and presents it as server and client credentials."""

from __future__ import annotations

from pathlib import Path

from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.ca_client import CaClient
from mesh.testing.polling import wait_until
from tests.component.ca_support import SERVER_NAME, TD, WORKLOAD_SLEEP, running_ca
from waypoint.identity import WaypointCredentials


async def test_the_waypoint_fetches_its_own_certificate(tmp_path: Path) -> None:
    identity = WorkloadIdentity(TD, "default", "sleep")  # the token's caller: a workload asking for itself
    async with running_ca(tmp_path) as ca:
        client = CaClient(
            ca.address, roots_pem=ca.root_pem, token=lambda: WORKLOAD_SLEEP, server_name=SERVER_NAME
        )
        credentials = WaypointCredentials(identity, client)
        try:
            await wait_until(lambda: credentials.ready, within=10, what="the waypoint's certificate")
            assert credentials.server_material().identity == identity
            assert (await credentials.client_material(identity)).identity == identity
        finally:
            await credentials.close()
