from __future__ import annotations

import pytest

from tests.conftest import AppClient

pytestmark = [pytest.mark.anyio, pytest.mark.in_process]


async def test_healthz_is_ok_and_summarises_model_states(client: AppClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["models"]["unloaded"] == 1
    await client.post("/api/v1/models/piper-joe/load")
    assert (await client.get("/healthz")).json()["models"]["loaded"] == 1


async def test_readyz_is_ready_while_serving(client: AppClient) -> None:
    response = await client.get("/readyz")
    assert (response.status_code, response.json()["status"]) == (200, "ready")
