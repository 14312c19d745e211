"""/docs and /redoc load every asset from the app itself: they work without internet."""

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.docs import install_docs

ASSET = re.compile(r"<(?:script|link)\b[^>]*?\b(?:src|href)=[\"']([^\"']+)[\"']", re.IGNORECASE)


@pytest.fixture(scope="module")
def client():
    app = FastAPI(title="Trunkline", docs_url=None, redoc_url=None)

    @app.get("/hello")
    def hello() -> dict:
        return {"hello": "world"}

    install_docs(app)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize(
    "page, expected",
    [
        ("/docs", {"/docs-static/swagger-ui-bundle.js", "/docs-static/swagger-ui.css"}),
        ("/redoc", {"/docs-static/redoc.standalone.js"}),
    ],
)
def test_page_loads_only_local_assets(client, page, expected):
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assets = set(ASSET.findall(response.text))
    assert expected | {"/docs-static/favicon.png"} == assets
    assert "http://" not in response.text and "https://" not in response.text
    assert "'/openapi.json'" in response.text or '"/openapi.json"' in response.text
    for url in assets:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url


def test_swagger_ui_is_version_5_for_openapi_3_1(client):
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    # Swagger UI 4 shows "Unable to render this definition" for an OpenAPI 3.1 document
    assert re.search(r'PACKAGE_VERSION:"5\.', client.get("/docs-static/swagger-ui-bundle.js").text)


def test_oauth2_redirect_and_schema(client):
    assert client.get("/docs/oauth2-redirect").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {"/hello"}  # the docs routes stay out of the schema


def test_root_path_prefixes_every_url():
    app = FastAPI(docs_url=None, redoc_url=None)
    install_docs(app)
    with TestClient(app, root_path="/api") as c:
        page = c.get("/docs").text
    assert set(ASSET.findall(page)) == {
        "/api/docs-static/swagger-ui-bundle.js",
        "/api/docs-static/swagger-ui.css",
        "/api/docs-static/favicon.png",
    }
    assert "'/api/openapi.json'" in page


def test_no_openapi_no_docs():
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    install_docs(app)
    with TestClient(app) as c:
        assert c.get("/docs").status_code == 404 and c.get("/docs-static/swagger-ui.css").status_code == 404
