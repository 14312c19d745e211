"""Bearer-token auth and the queue limit (429 with Retry-After), on a server configured for both."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import RunningServer

from .helpers import payload

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def strict_server():
    s = RunningServer(
        "torch",
        TRUNKLINE_AUTH_TOKEN=TOKEN,
        TRUNKLINE_MAX_QUEUE="16",
        TRUNKLINE_BATCH_BUCKETS="[1,8]",
        TRUNKLINE_MODEL="mnist-scenes",
    )
    s.wait_ready()
    yield s
    s.stop()


def test_auth_required_on_models_but_not_on_probes(strict_server, scenes):
    url = strict_server.url
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 200
    r = httpx.post(f"{url}/v1/predict", json=payload(scenes.images[:1], "count"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["field"] == "authorization"
    r = httpx.get(f"{url}/v2/models/mnist-scenes", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    ok = httpx.post(
        f"{url}/v1/predict",
        json=payload(scenes.images[:1], "count"),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert ok.status_code == 200


def test_full_queue_answers_429_and_keeps_serving(strict_server, scenes):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = payload(scenes.images[:8], tasks=["count", "presence", "sum", "segment"])

    def send(_):
        return httpx.post(f"{strict_server.url}/v1/predict", json=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, range(24)))
    statuses = [r.status_code for r in results]
    assert set(statuses) <= {200, 429} and 429 in statuses and 200 in statuses
    for r in results:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"]["message"]
    after = send(0)
    assert after.status_code == 200


def test_grpc_needs_the_same_bearer_token_but_not_for_probes(strict_server, scenes):
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(strict_server.grpc)
    x = tg.InferInput("image", [1, 56, 56], "UINT8")
    x.set_data_from_numpy(scenes.images[:1].astype("uint8"))
    assert client.is_server_live() and client.is_server_ready()
    for headers in (None, {"authorization": "Bearer wrong"}):
        with pytest.raises(tg.InferenceServerException) as e:
            client.infer("mnist-scenes", [x], parameters={"task": "count"}, headers=headers)
        assert e.value.status() == "StatusCode.UNAUTHENTICATED" and "authorization" in e.value.message()
        with pytest.raises(tg.InferenceServerException):
            client.get_model_metadata("mnist-scenes", headers=headers)
    ok = client.infer(
        "mnist-scenes", [x], parameters={"task": "count"}, headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert ok.as_numpy("count_label").shape == (1,)
    client.close()
