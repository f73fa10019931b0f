"""`dogcat serve` (the serve extra): the HTTP API's schema, rows and every error code through
FastAPI's TestClient; a real uvicorn process for concurrency and SIGTERM (slow); the same app on
Ray Serve (bulk, `nox -s bulk`).

The model is the shipped one on ONNX Runtime: no Keras backend is needed, and its rows are the
rows `dogcat predict --json` gives, which is what every answer here is compared with.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("python_multipart", reason="the serve extra is not installed")

from fastapi.testclient import TestClient
from PIL import Image

from dogcat import serve as serve_module
from dogcat.cli import main
from dogcat.inference import Classifier
from dogcat.preprocessing import MAX_FILE_BYTES
from dogcat.serve import MicroBatcher, create_app
from dogcat.verdict import row_columns
from tests.helpers import EXAMPLES, REPO
from tests.imagegen import encode, make_huge_png, make_pet
from tests.servers import free_port

SHIPPED_MODEL = REPO / "models" / "dog_cat_classifier.keras"
PHOTOS = {path.name: path.read_bytes() for path in sorted(EXAMPLES.glob("*.jpg"))}
PHOTOS["drawn.png"] = encode(make_pet("dog", 0, (160, 120)))


def _wait_ready(client, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.from_path(SHIPPED_MODEL, runtime="onnx")


@pytest.fixture(scope="module")
def client(classifier):
    with TestClient(create_app(SHIPPED_MODEL, classifier=classifier, max_batch=4)) as client:
        _wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def expected(classifier) -> dict[str, dict]:
    """Each photo's row as `dogcat predict --json` builds it (`Prediction.as_row`)."""
    names = list(classifier.class_names.values())
    return {name: classifier.predict([data], names=[name])[0].as_row(names) for name, data in PHOTOS.items()}


def _same_row(got: dict, want: dict) -> bool:
    """Equal rows, probabilities within 1e-5: a photo scored in another batch moves the last digits."""
    def rounded(value):
        if isinstance(value, float):
            return round(value, 5)
        if isinstance(value, dict):
            return {key: rounded(item) for key, item in value.items()}
        if isinstance(value, list):
            return [rounded(item) for item in value]
        return value

    return rounded(got) == rounded(want)


def _error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


def test_classify_gives_predicts_row_for_an_upload_and_a_raw_body(client, expected):
    for name, data in PHOTOS.items():
        assert _same_row(client.post("/v1/classify", files={"file": (name, data, "image/jpeg")}).json(), expected[name])
        raw = client.post("/v1/classify", content=data, headers={"content-type": "image/jpeg"}).json()
        assert _same_row(raw, {**expected[name], "path": "upload"})
    assert {row["verdict"] for row in expected.values()} >= {"cat", "dog", "neither"}, "photos that tell verdicts apart"


def test_explain_adds_the_heatmap_as_a_png(client, expected):
    row = client.post("/v1/classify?explain=true", files={"file": ("cat-chelsea.jpg", PHOTOS["cat-chelsea.jpg"])}).json()
    png = Image.open(io.BytesIO(base64.b64decode(row.pop("explanation_png"))))
    assert (png.format, png.size) == ("PNG", (451, 300))
    assert _same_row(row, expected["cat-chelsea.jpg"])


def test_a_batch_answers_a_row_per_image_and_a_bad_image_is_a_row_with_its_error(client, expected):
    files = [("files", (name, data)) for name, data in list(PHOTOS.items())[:3]]
    files.insert(1, ("files", ("notes.jpg", b"not a photo")))
    rows = client.post("/v1/classify/batch", files=files).json()["rows"]
    assert [row["path"] for row in rows] == ["astronaut.jpg", "notes.jpg", "cat-chelsea.jpg", "dog-darknet.jpg"]
    assert rows[1]["error_code"] == "unsupported_format"
    assert rows[1]["verdict"] is None
    assert rows[1]["error"].startswith("not an image")
    assert _same_row([rows[0], *rows[2:]], [expected[name] for name in ("astronaut.jpg", "cat-chelsea.jpg", "dog-darknet.jpg")])


def test_predict_json_csv_and_the_api_give_one_row_with_the_same_keys_and_values(client, tmp_path, capsys):
    """One row builder: a second one for JSON (or the API) would add, drop or reshape a key."""
    for name, data in PHOTOS.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "notes.jpg").write_bytes(b"not a photo")
    photos = sorted(tmp_path.iterdir())
    command = ["predict", *map(str, photos), "--model", str(SHIPPED_MODEL), "--runtime", "onnx"]
    assert main([*command, "--json"]) == 1  # the broken file
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main([*command, "--csv"]) == 1
    header, *cells = csv.reader(io.StringIO(capsys.readouterr().out))
    answers = [row for start in range(0, len(photos), 4)  # the client's max_batch
               for row in client.post("/v1/classify/batch", files=[("files", (p.name, p.read_bytes()))
                                                                   for p in photos[start : start + 4]]).json()["rows"]]
    assert answers[photos.index(tmp_path / "notes.jpg")].pop("error_code") == "unsupported_format"
    assert {"cat", "dog", "neither"} <= {line["verdict"] for line in lines}
    for line, csv_row, answer in zip(lines, cells, answers, strict=True):
        assert list(line) == header  # the same columns, in the same order
        assert set(answer) == set(line)  # the API lists the model's p_<class> fields after its documented ones
        assert csv_row == ["" if v is None else f"{v:.6f}" if isinstance(v, float) else str(v) for v in line.values()]
        assert _same_row(answer, {**line, "path": Path(line["path"]).name})


def test_every_refused_upload_has_its_status_and_stable_code(client):
    truncated = PHOTOS["dog-darknet.jpg"][:300]
    assert "truncated" in _error(client.post("/v1/classify", content=truncated), 400, "unreadable_image").lower()
    _error(client.post("/v1/classify", content=b""), 400, "unreadable_image")
    _error(client.post("/v1/classify", content=b"%PDF-1.4 not a photo"), 415, "unsupported_format")
    tiff = encode(make_pet("cat", 0), "TIFF")  # Pillow reads it; dogcat does not accept it
    _error(client.post("/v1/classify", files={"file": ("a.tif", tiff)}), 415, "unsupported_format")
    assert "pixel" in _error(client.post("/v1/classify", content=make_huge_png(11_000, 11_000)), 413, "too_large")
    over = b"\xff" * (serve_module.MAX_BODY_BYTES + 1)
    _error(client.post("/v1/classify", content=over), 413, "too_large")
    _error(client.post("/v1/classify?explain=maybe", content=PHOTOS["cat-chelsea.jpg"]), 422, "invalid_parameters")
    _error(client.post("/v1/classify", files=[("file", ("a.jpg", PHOTOS["cat-chelsea.jpg"]))] * 2), 422, "invalid_parameters")
    _error(client.post("/v1/classify/batch", content=PHOTOS["cat-chelsea.jpg"]), 422, "invalid_parameters")
    five = [("files", (f"{i}.jpg", PHOTOS["cat-chelsea.jpg"])) for i in range(5)]  # max_batch is 4
    _error(client.post("/v1/classify/batch", files=five), 422, "invalid_parameters")
    _error(client.get("/v1/nothing"), 404, "not_found")
    assert client.app.state.engine.waiting == 0, "every refused request gave its place in the queue back"


def test_explain_on_a_model_that_cannot_is_422_not_a_server_error(client, classifier, monkeypatch):
    monkeypatch.setattr(classifier.runner, "can_explain", False)
    response = client.post("/v1/classify?explain=true", content=PHOTOS["cat-chelsea.jpg"])
    assert "dogcat export" in _error(response, 422, "invalid_parameters")
    batch = client.post("/v1/classify/batch?explain=true", files=[("files", ("a.jpg", PHOTOS["cat-chelsea.jpg"]))])
    _error(batch, 422, "invalid_parameters")
    assert client.app.state.engine.waiting == 0


def test_a_body_over_the_limit_is_refused_while_it_streams_in(client):
    """No Content-Length (a chunked upload): counted as it arrives, refused before it is all held."""
    sent = 0

    def chunks():
        nonlocal sent
        while sent <= MAX_FILE_BYTES * 2:
            sent += 2**20
            yield b"\0" * 2**20

    message = _error(client.post("/v1/classify", content=chunks()), 413, "too_large")
    assert message.startswith("The request body is over"), "refused by the body's limit, not by the decoder"


def test_a_full_queue_answers_429_with_retry_after(client):
    engine = client.app.state.engine
    engine.waiting = engine.max_queue
    try:
        response = client.post("/v1/classify", content=PHOTOS["cat-chelsea.jpg"])
        _error(response, 429, "queue_full")
        assert response.headers["retry-after"] == "1"
        _error(client.post("/v1/classify/batch", files=[("files", ("a.jpg", PHOTOS["cat-chelsea.jpg"]))]), 429, "queue_full")
    finally:
        engine.waiting = 0
    assert client.post("/v1/classify", content=PHOTOS["cat-chelsea.jpg"]).status_code == 200


def test_503_until_the_model_is_loaded_and_warm(monkeypatch, classifier):
    loaded, warmed = threading.Event(), threading.Event()
    classify_decoded = classifier.classify_decoded

    def slow_load(*args, **kwargs):
        loaded.wait(30)
        return classifier

    def slow_classify(*args, **kwargs):  # the first call is the warm-up photo's
        warmed.wait(30)
        return classify_decoded(*args, **kwargs)

    monkeypatch.setattr(Classifier, "from_path", slow_load)
    monkeypatch.setattr(classifier, "classify_decoded", slow_classify)
    with TestClient(create_app(SHIPPED_MODEL)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        _error(client.get("/readyz"), 503, "not_ready")
        response = client.post("/v1/classify", content=PHOTOS["cat-chelsea.jpg"])
        _error(response, 503, "not_ready")
        assert response.headers["retry-after"] == "1"
        _error(client.get("/v1/model"), 503, "not_ready")
        loaded.set()
        time.sleep(0.3)  # loaded; the warm-up photo is still in the model
        _error(client.get("/readyz"), 503, "not_ready")
        warmed.set()
        _wait_ready(client)
        assert client.post("/v1/classify", content=PHOTOS["cat-chelsea.jpg"]).json()["verdict"] == "cat"


def test_readyz_says_why_the_model_did_not_load():
    with TestClient(create_app("/nowhere/model.keras")) as client:
        deadline = time.monotonic() + 30
        while "not found" not in (message := _error(client.get("/readyz"), 503, "not_ready")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "/nowhere/model.keras" in message


def test_a_token_guards_the_api_but_not_the_health_checks(classifier):
    with TestClient(create_app(classifier=classifier, token="s3cret")) as client:
        _wait_ready(client)
        assert client.get("/healthz").status_code == client.get("/readyz").status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            response = client.post("/v1/classify", content=PHOTOS["cat-chelsea.jpg"], headers=headers)
            _error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
            _error(client.get("/metrics", headers=headers), 401, "unauthorized")
        good = {"authorization": "Bearer s3cret"}
        assert client.post("/v1/classify", content=PHOTOS["cat-chelsea.jpg"], headers=good).status_code == 200
        assert client.get("/v1/model", headers=good).status_code == 200


def test_the_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DOGCAT_API_TOKEN", "from-env")
    assert serve_module.read_token() == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert serve_module.read_token(tmp_path / "token") == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        serve_module.read_token(tmp_path / "empty")
    monkeypatch.delenv("DOGCAT_API_TOKEN")
    assert serve_module.read_token() is None


def test_model_card_and_schema(client, classifier):
    from dogcat.artifacts import file_sha256

    card = client.get("/v1/model").json()
    assert card["classes"] == ["cat", "dog"]
    assert card["runtime"] == "onnx"
    assert card["sha256"] == file_sha256(SHIPPED_MODEL)
    assert card["thresholds"]["unsure_below"] == classifier.rules.unsure_below
    assert (card["max_batch"], card["max_image_bytes"]) == (4, MAX_FILE_BYTES)
    schema = client.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/classify/batch", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    classify = schema["paths"]["/v1/classify"]["post"]
    assert {"200", "400", "413", "415", "422", "429", "503"} <= set(classify["responses"])
    assert "multipart/form-data" in classify["requestBody"]["content"]
    # The row's fields, documented: each of Prediction.as_row's but the model's p_<class> (the extra fields), and the API's own.
    documented = schema["components"]["schemas"]["Row"]
    fixed = [column for column in row_columns(card["classes"]) if column not in {"p_cat", "p_dog"}]
    assert list(documented["properties"]) == [*fixed, "error_code", "explanation_png"]
    assert "p_<class>" in documented["additionalProperties"]["description"]
    assert client.get("/docs").status_code == 200


def test_metrics_count_requests_verdicts_batches_and_errors(classifier):
    with TestClient(create_app(classifier=classifier)) as client:
        _wait_ready(client)
        client.post("/v1/classify", content=PHOTOS["dog-darknet.jpg"])
        client.post("/v1/classify", content=b"junk")
        client.post("/v1/classify/batch", files=[("files", (n, d)) for n, d in PHOTOS.items()])
        text = client.get("/metrics").text
    expected_dogs = 1 + sum(1 for name in PHOTOS if name.startswith("dog"))  # the drawn "dog" is neither
    assert f'dogcat_verdicts_total{{verdict="dog"}} {float(expected_dogs)}' in text
    assert 'dogcat_requests_total{route="/v1/classify",status="200"} 1.0' in text
    assert 'dogcat_requests_total{route="/v1/classify",status="415"} 1.0' in text
    assert 'dogcat_errors_total{code="unsupported_format"} 1.0' in text
    assert 'dogcat_request_seconds_count{route="/v1/classify/batch"} 1.0' in text
    # The warm-up photo, the single photo, and the batch's six in one to six model calls.
    calls = float(text.split("dogcat_batch_size_count ", 1)[1].split()[0])
    photos = float(text.split("dogcat_batch_size_sum ", 1)[1].split()[0])
    assert photos == 1 + 1 + len(PHOTOS)
    assert calls < photos


def test_the_batcher_gathers_requests_while_the_model_is_busy_up_to_max_batch():
    calls: list[list[int]] = []

    async def run(items):
        calls.append(items)
        await asyncio.sleep(0.2 if items == [0] else 0.01)
        return [item * 10 for item in items]

    async def scenario():
        batcher = MicroBatcher(run, max_batch=4, wait_s=0.1, lanes=2)
        first = asyncio.ensure_future(batcher.submit(0))  # idle: goes at once, and keeps a lane busy
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(batcher.submit(1))  # a lane is free, but the model is busy: waits for company
        await asyncio.sleep(0.02)
        rest = asyncio.gather(*(batcher.submit(i) for i in range(2, 7)))
        results = await first, await second, await rest
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == (0, 10, [20, 30, 40, 50, 60])
    assert calls == [[0], [1, 2, 3, 4], [5, 6]]


def test_an_idle_batcher_sends_a_lone_request_without_waiting():
    async def scenario():
        batcher = MicroBatcher(lambda items: asyncio.sleep(0, items), max_batch=4, wait_s=30, lanes=1)
        start = time.monotonic()
        answer = await batcher.submit(1)
        await batcher.close()
        return answer, time.monotonic() - start

    answer, seconds = asyncio.run(scenario())
    assert answer == 1
    assert seconds < 5, "one client pays no batching wait"


def test_a_ray_serve_replica_takes_a_full_batch_of_requests_at_once():
    """Ray Serve hands a replica at most `max_ongoing_requests` requests (default 5): below
    `max_batch`, `@serve.batch` could never gather a full batch, whatever the load."""
    for max_batch in (1, 8, 32, 128):
        options = serve_module.ray_deployment_options(replicas=2, max_batch=max_batch)
        assert options["max_ongoing_requests"] >= 2 * max_batch  # a batch running, the next one gathering
        assert options["num_replicas"] == 2


def test_a_failed_model_call_fails_its_requests_and_not_the_batcher():
    async def run(items):
        if 0 in items:
            raise RuntimeError("boom")
        return items

    async def scenario():
        batcher = MicroBatcher(run, max_batch=2, wait_s=0, lanes=1)
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(0)
        answer = await batcher.submit(5)
        await batcher.close()
        return answer

    assert asyncio.run(scenario()) == 5


def test_serve_without_its_extra_names_it_in_one_line(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "missing='uvicorn'" in err
    assert 'pip install ".[serve]"' in err


def test_serve_refuses_bad_settings_in_one_line(capsys, tmp_path):
    assert main(["serve", "--replicas", "2"]) == 2
    assert "--address" in capsys.readouterr().err
    (tmp_path / "token").write_text("")
    assert main(["serve", "--token-file", str(tmp_path / "token")]) == 2
    assert "token file is empty" in capsys.readouterr().err
    for bad in (["--max-batch", "0"], ["--batch-wait-ms", "nan"], ["--port", "0"]):
        with pytest.raises(SystemExit):
            main(["serve", *bad])
        assert "Received" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A real server: `dogcat serve` in its own process, on 127.0.0.1.

def _start_server(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    from tests.servers import serving

    port = free_port()
    command = [sys.executable, "-m", "dogcat", "serve", "--model", str(SHIPPED_MODEL), "--runtime", "onnx",
               "--port", str(port), *args]
    url = f"http://127.0.0.1:{port}"
    context = serving(command, f"{url}/readyz", tmp_path / "server.log", timeout=90)
    return context, url


@pytest.mark.slow
def test_a_real_server_batches_concurrent_clients_and_answers_every_one_or_429(tmp_path, expected):
    import httpx

    context, url = _start_server(tmp_path, "--max-batch", "4")  # queues 32 photos at most
    with context:
        def one(name: str) -> tuple[int, dict | None, str | None]:
            with httpx.Client(base_url=url, timeout=60) as http:
                response = http.post("/v1/classify", files={"file": (name, PHOTOS[name])})
                return response.status_code, response.json(), response.headers.get("retry-after")

        names = [list(PHOTOS)[i % len(PHOTOS)] for i in range(200)]
        with ThreadPoolExecutor(200) as clients:  # 200 clients at once
            answers = list(clients.map(one, names))
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 32, "the queue's worth at least was served"
        for name, (status, body, retry) in zip(names, answers, strict=True):
            if status == 200:
                assert _same_row(body, expected[name]), (body, expected[name])
            else:
                assert body["error"]["code"] == "queue_full"
                assert retry == "1"
        with ThreadPoolExecutor(16) as clients:  # within the queue: every one answered
            assert [s for s, _, _ in clients.map(one, names[:48])] == [200] * 48
        metrics = httpx.get(f"{url}/metrics").text
        calls = float(metrics.split("dogcat_batch_size_count ", 1)[1].split()[0])
        photos = float(metrics.split("dogcat_batch_size_sum ", 1)[1].split()[0])
        assert photos / calls > 1.5, "concurrent requests shared model calls"


@pytest.mark.slow
def test_sigterm_drains_the_requests_in_flight_then_exits_0(tmp_path, expected):
    import httpx

    context, url = _start_server(tmp_path, "--max-batch", "64")
    with context as server:
        def waiting() -> float:
            return float(httpx.get(f"{url}/metrics").text.split("\ndogcat_photos_waiting ", 1)[1].split()[0])

        batch = [("files", (f"{index}.jpg", PHOTOS["dog-darknet.jpg"])) for index in range(64)]  # about a second's work

        def send() -> httpx.Response:
            with httpx.Client(base_url=url, timeout=120) as http:
                return http.post("/v1/classify/batch", files=batch)

        with ThreadPoolExecutor(1) as client:
            answer = client.submit(send)
            deadline = time.monotonic() + 60
            while waiting() < 64:  # received: in the server's hands, not answered yet
                assert time.monotonic() < deadline
                assert not answer.done(), "answered before it could be seen in flight"
                time.sleep(0.005)
            server.send_signal(signal.SIGTERM)
            response = answer.result()
        assert response.status_code == 200
        rows = response.json()["rows"]
        assert len(rows) == 64
        assert all(_same_row(row, {**expected["dog-darknet.jpg"], "path": row["path"]}) for row in rows)
        assert server.wait(timeout=30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")


@pytest.mark.slow
def test_the_readmes_curl_and_httpx_examples_run(tmp_path, expected):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Serve an HTTP API", 1)[1].split("\n## ", 1)[0]
    start = next(line for line in section.splitlines() if line.startswith("dogcat serve"))
    assert start == "dogcat serve"
    curl = next(line for line in section.splitlines() if line.startswith("curl "))
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "cat.jpg").write_bytes(PHOTOS["cat-chelsea.jpg"])
    context, url = _start_server(tmp_path)
    with context:
        port = url.rsplit(":", 1)[1]
        shown = subprocess.run(curl.replace("8000", port), shell=True, cwd=tmp_path, capture_output=True, text=True,
                               timeout=60, check=True)
        assert _same_row(json.loads(shown.stdout), {**expected["cat-chelsea.jpg"], "path": "cat.jpg"})
        ran = subprocess.run([sys.executable, "-c", example.replace("8000", port)], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split() == ["cat", "cat"], ran.stdout


@pytest.mark.bulk
def test_ray_serve_answers_predicts_rows_and_sigterm_removes_the_deployment(tmp_path, capsys):
    """`dogcat serve --address` as a user runs it: two replicas on a local Ray, the same rows as
    `dogcat predict --json`, a bad photo a row with its error, and SIGTERM a clean exit."""
    import httpx

    pytest.importorskip("ray.serve", reason="the ray extra is not installed (nox -s bulk)")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in PHOTOS.items():
        (folder / name).write_bytes(data)
    (folder / "notes.jpg").write_bytes(b"not a photo")
    main(["predict", str(folder), "--json", "--model", str(SHIPPED_MODEL), "--runtime", "onnx"])
    expected = {Path(row["path"]).name: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    port = free_port()
    command = [sys.executable, "-m", "dogcat", "serve", "--address", "local", "--replicas", "2", "--port", str(port),
               "--model", str(SHIPPED_MODEL), "--runtime", "onnx"]
    from tests.servers import serving

    with serving(command, f"http://127.0.0.1:{port}/readyz", tmp_path / "serve.log", timeout=240) as server:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            files = [("files", (path.name, path.read_bytes())) for path in sorted(folder.iterdir())]
            rows = http.post("/v1/classify/batch", files=files).json()["rows"]
            one = http.post("/v1/classify", files={"file": ("cat-chelsea.jpg", PHOTOS["cat-chelsea.jpg"])}).json()
            card = http.get("/v1/model").json()
        assert len(rows) == len(expected)
        for row in rows:
            want = {**expected[row["path"]], "path": row["path"]}
            if row["error"] is not None:
                assert row.pop("error_code") == "unsupported_format"
            assert _same_row(row, want), (row, want)
        assert _same_row(one, {**expected["cat-chelsea.jpg"], "path": "cat-chelsea.jpg"})
        assert card["runtime"] == "onnx"
        deadline = time.monotonic() + 120
        while "replica(s) serving on" not in (tmp_path / "serve.log").read_text():  # the deployment is complete
            assert time.monotonic() < deadline
            time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0, (tmp_path / "serve.log").read_text()[-3000:]
