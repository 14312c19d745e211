"""The model repository in explicit mode, driven by Triton's own client against a real
server hosting the bundled mnist-scenes and a second model (a copy under another name):
index, load, unload, versions, load/unload under traffic, failed loads, memory after unload."""

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from models.checkpoint import BUNDLED
from tests.conftest import RunningServer

from .helpers import payload

SOURCE = BUNDLED / "mnist-scenes"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(SOURCE, root / "mnist-scenes")  # DIR/<name>/ : version 1
    shutil.copytree(SOURCE, root / "scenes-b" / "1")  # DIR/<name>/<version>/
    return root


@pytest.fixture(scope="module")
def server(repo):
    s = RunningServer("torch", TRUNKLINE_MODEL_REPOSITORY=str(repo), TRUNKLINE_MODEL_CONTROL_MODE="explicit")
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=300)
    yield c
    c.close()


def infer(client, model, images, task="sum", version=""):
    x = triton.InferInput("image", list(images.shape), "UINT8")
    x.set_data_from_numpy(images)
    result = client.infer(model, [x], model_version=version, parameters={"task": task, "budget": "medium"})
    return result.as_numpy(f"{task}_label")


def states(client) -> dict[str, tuple[str, str]]:
    return {m["name"]: (m["state"], m.get("version", "")) for m in client.get_model_repository_index()}


def test_index_load_unload_and_versions(client, repo, scenes):
    images = scenes.images[:4]
    assert states(client) == {"mnist-scenes": ("READY", "1"), "scenes-b": ("READY", "1")}
    a = infer(client, "mnist-scenes", images)
    np.testing.assert_array_equal(infer(client, "scenes-b", images, version="1"), a)

    client.unload_model("scenes-b")
    assert not client.is_model_ready("scenes-b")
    assert states(client)["scenes-b"][0] == "UNAVAILABLE"
    with pytest.raises(InferenceServerException, match="not loaded"):
        infer(client, "scenes-b", images)
    np.testing.assert_array_equal(infer(client, "mnist-scenes", images), a)  # A unaffected

    client.load_model("scenes-b")
    assert client.is_model_ready("scenes-b") and client.is_model_ready("scenes-b", "1")
    with pytest.raises(InferenceServerException, match="no version '2'"):
        infer(client, "scenes-b", images, version="2")

    shutil.copytree(repo / "scenes-b" / "1", repo / "scenes-b" / "2")  # a new version appears
    try:
        client.load_model("scenes-b")
        assert states(client)["scenes-b"] == ("READY", "2")
        np.testing.assert_array_equal(infer(client, "scenes-b", images, version="2"), a)
        assert not client.is_model_ready("scenes-b", "1")
    finally:
        shutil.rmtree(repo / "scenes-b" / "2")
        client.load_model("scenes-b")
    assert states(client)["scenes-b"] == ("READY", "1")


def test_reload_swaps_atomically_under_traffic(server, scenes):
    body = payload(scenes.images[:4], tasks=["count", "sum"], budget="medium", model="mnist-scenes")
    with ThreadPoolExecutor(4) as pool:
        reload = pool.submit(httpx.post, f"{server.url}/v2/repository/models/mnist-scenes/load", timeout=300)
        answers = []
        while not reload.done():
            answers.append(httpx.post(f"{server.url}/v1/predict", json=body, timeout=60))
        assert reload.result().status_code == 200 and reload.result().json()["ready"] is True
    assert answers and {r.status_code for r in answers} == {200}
    first, last = answers[0].json(), httpx.post(f"{server.url}/v1/predict", json=body, timeout=60).json()
    assert first["outputs"] == last["outputs"] and last["model"] == "mnist-scenes"


def test_grpc_repository_index_load_and_unload(server, scenes):
    """The same repository through Triton's gRPC client (RepositoryIndex, RepositoryModelLoad,
    RepositoryModelUnload), explicit mode."""
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(server.grpc)
    x = tg.InferInput("image", [2, 56, 56], "UINT8")
    x.set_data_from_numpy(scenes.images[:2])
    index = {m.name: (m.state, m.version) for m in client.get_model_repository_index().models}
    assert index == {"mnist-scenes": ("READY", "1"), "scenes-b": ("READY", "1")}
    client.unload_model("scenes-b")
    assert not client.is_model_ready("scenes-b")
    assert {m.name: m.state for m in client.get_model_repository_index().models}["scenes-b"] == "UNAVAILABLE"
    with pytest.raises(tg.InferenceServerException) as e:
        client.infer("scenes-b", [x], parameters={"task": "sum"})
    assert e.value.status() == "StatusCode.NOT_FOUND" and "not loaded" in e.value.message()
    client.load_model("scenes-b")
    assert client.is_model_ready("scenes-b")
    a = client.infer("scenes-b", [x], parameters={"task": "sum"}).as_numpy("sum_label")
    b = client.infer("mnist-scenes", [x], parameters={"task": "sum"}).as_numpy("sum_label")
    np.testing.assert_array_equal(a, b)
    with pytest.raises(tg.InferenceServerException) as e:
        client.load_model("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    client.close()


def test_a_request_naming_no_model_goes_to_the_one_with_its_tasks_or_is_422(server, scenes):
    body = payload(scenes.images[:1], task="count")  # both models here have `count`
    r = httpx.post(f"{server.url}/v1/predict", json=body, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["field"] == "model", r.text
    assert "mnist-scenes" in r.text and "scenes-b" in r.text
    r = httpx.post(f"{server.url}/v1/predict", json=payload(scenes.images[:1], task="spam"), timeout=60)
    assert r.status_code == 422 and "unknown task 'spam': no model here has it" in r.text, r.text


def test_load_and_unload_need_explicit_mode(scenes):
    s = RunningServer("torch", TRUNKLINE_MODEL="mnist-scenes")  # model control mode none (the default)
    try:
        s.wait_ready()
        for action in ("load", "unload"):
            r = httpx.post(f"{s.url}/v2/repository/models/mnist-scenes/{action}", timeout=30)
            assert r.status_code == 403 and "--model-control-mode explicit" in r.json()["error"]
        import tritonclient.grpc as tg

        client = tg.InferenceServerClient(s.grpc)
        for action in (client.load_model, client.unload_model):
            with pytest.raises(tg.InferenceServerException) as e:
                action("mnist-scenes")
            assert e.value.status() == "StatusCode.PERMISSION_DENIED"
            assert "--model-control-mode explicit" in e.value.message()
        index = httpx.post(f"{s.url}/v2/repository/index").json()
        assert index == [{"name": "mnist-scenes", "version": "1", "state": "READY", "reason": ""}]
    finally:
        s.stop()


def test_unknown_and_unsafe_model_names_are_404(server):
    for name in ("nope", "..", "%2e%2e", "a%2Fb"):
        r = httpx.post(f"{server.url}/v2/repository/models/{name}/load", timeout=30)
        assert r.status_code == 404, (name, r.text)


def in_flight(url: str, model: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'trunkline_in_flight_requests{{model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_load_unload_cycles_under_traffic(server, client, scenes):
    """Clients hammer model A while model B is loaded and unloaded 10 times: no A request
    fails; B's in-flight request at each unload is answered; new B requests get 404/503."""
    body_a = payload(scenes.images[:2], tasks=["count", "sum"], budget="low", model="mnist-scenes")
    body_b = payload(
        np.repeat(scenes.images, 4, axis=0), tasks=["count", "presence", "sum", "segment"], model="scenes-b"
    )
    stop, a_statuses = False, []

    def hammer():
        with httpx.Client(timeout=120) as h:
            while not stop:
                a_statuses.append(h.post(f"{server.url}/v1/predict", json=body_a).status_code)

    with ThreadPoolExecutor(5) as pool:
        workers = [pool.submit(hammer) for _ in range(3)]
        try:
            for _ in range(10):
                b = pool.submit(httpx.post, f"{server.url}/v1/predict", json=body_b, timeout=120)
                deadline = time.monotonic() + 30
                while in_flight(server.url, "scenes-b") < 1 and not b.done() and time.monotonic() < deadline:
                    time.sleep(0.002)
                client.unload_model("scenes-b")
                assert b.result().status_code == 200, b.result().text  # answered, not dropped
                late = httpx.post(f"{server.url}/v1/predict", json=body_b, timeout=60)
                assert late.status_code in (404, 503) and "scenes-b" in late.json()["error"]["message"]
                client.load_model("scenes-b")
        finally:
            stop = True
        for w in workers:
            w.result()
    assert len(a_statuses) > 30 and set(a_statuses) == {200}, sorted(set(a_statuses))


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def test_memory_returns_after_unload(server, client, scenes):
    client.unload_model("scenes-b")
    infer(client, "mnist-scenes", scenes.images[:8])
    before = rss_mib(server.proc.pid)
    client.load_model("scenes-b")
    infer(client, "scenes-b", scenes.images[:8])
    loaded = rss_mib(server.proc.pid)
    client.unload_model("scenes-b")
    after = rss_mib(server.proc.pid)
    client.load_model("scenes-b")
    assert after <= before * 1.10, (before, loaded, after)


def _corrupt_safetensors(d):
    (d / "model.safetensors").write_bytes(b"\x00" * 64)


def _shape_mismatch(d):
    cfg = (d / "config.json").read_text().replace('"mlp_hidden": 512', '"mlp_hidden": 256')
    (d / "config.json").write_text(cfg)


def _missing_file(d):
    (d / "routes.json").unlink()


def _invalid_config(d):
    (d / "config.json").write_text((d / "config.json").read_text().replace('"heads": 8', '"heads": "many"'))


@pytest.mark.parametrize(
    ("corrupt", "file", "reason"),
    [
        (_corrupt_safetensors, "model.safetensors", "unreadable"),
        (_shape_mismatch, "model.safetensors", "shape"),
        (_missing_file, "routes.json", "missing"),
        (_invalid_config, "config.json", "heads"),
    ],
)
def test_failed_load_keeps_the_old_version_serving(server, client, repo, scenes, corrupt, file, reason):
    folder = repo / "scenes-b" / "1"
    backup = repo / "backup"
    shutil.copytree(folder, backup)
    expected = infer(client, "scenes-b", scenes.images[:4])
    try:
        corrupt(folder)
        r = httpx.post(f"{server.url}/v2/repository/models/scenes-b/load", timeout=120)
        assert r.status_code == 400, r.text
        message = r.json()["error"]
        assert file in message and reason in message, message
        assert client.is_model_ready("scenes-b")
        np.testing.assert_array_equal(infer(client, "scenes-b", scenes.images[:4]), expected)
    finally:
        shutil.rmtree(folder)
        backup.rename(folder)
