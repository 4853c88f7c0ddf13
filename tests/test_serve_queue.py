"""The server under load and at its edges: a full queue, a failing slot, a client that hangs up, the API key,
the default bind, the metrics."""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import urllib.request
from pathlib import Path

import openai

from tests.test_serve import KEY, chat, client, fleet, free_port, get, health, live_server, server  # noqa: F401  (fixtures too)


LONG = {"max_tokens": 480, "n": 8, "temperature": 1.0, "seed": 11}  # ~4,000 tokens: a request that takes a while


def test_queue_overflow_is_429_and_accepted_requests_complete(fleet):
    with live_server("--task", f"t={fleet / 'base.gguf'}", "--slots", "1", "--queue", "1") as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        results = {}
        threads = [threading.Thread(target=lambda n=n: results.update({n: chat(c, model="t", **LONG)}))
                   for n in ("first", "second")]
        for thread in threads:
            thread.start()
        deadline = time.time() + 10
        while (health(url)["busy"], health(url)["queued"]) != (1, 1):  # one running, one waiting
            assert time.time() < deadline
            time.sleep(0.005)
        started = time.perf_counter()
        status, headers, body = get(url + "/v1/chat/completions", key=None, method="POST",
                                    body={"model": "t", "messages": [{"role": "user", "content": "x"}]})
        refused_in = time.perf_counter() - started
        assert status == 429 and refused_in < 0.2, (status, refused_in)
        assert int(headers["Retry-After"]) >= 1
        assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
        for thread in threads:
            thread.join()
        for name in ("first", "second"):  # both accepted, both complete, all 8 choices each
            assert len(results[name].choices) == 8 and results[name].usage.completion_tokens >= 8
        assert [c.message.content for c in results["first"].choices] == \
            [c.message.content for c in results["second"].choices]  # same seed, same answer: nothing mixed in


def test_a_bug_in_a_slot_is_a_500_envelope_logged_with_its_traceback_and_the_slot_serves_on(fleet, monkeypatch,
                                                                                             caplog):
    from tinytitan.serve import backend

    def broken(*args):
        raise RuntimeError("a bug")

    with live_server("--task", f"t={fleet / 'base.gguf'}", "--slots", "1") as (url, _):
        monkeypatch.setattr(backend, "generate_choice", broken)
        status, _, body = get(url + "/v1/chat/completions", key=None, method="POST",
                              body={"model": "t", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        assert status == 500
        assert json.loads(body)["error"] == {"message": "internal error: RuntimeError: a bug", "type": "server_error",
                                             "param": None, "code": None}
        logged = [r for r in caplog.records if r.name == "tinytitan.serve"]
        assert logged and logged[-1].exc_info and "a bug" in str(logged[-1].exc_info[1])
        monkeypatch.undo()  # greedy: a sampled first token may end the turn at once (0 tokens, a flaky test)
        status, _, body = get(url + "/v1/chat/completions", key=None, method="POST",
                              body={"model": "t", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                                    "temperature": 0})
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] >= 1


def test_disconnect_frees_the_slot_and_spares_the_others(fleet):
    with live_server("--task", f"t={fleet / 'base.gguf'}", "--slots", "2", "--queue", "2") as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        expected = [x.message.content for x in chat(c, model="t", **LONG).choices]
        other = {}
        runner = threading.Thread(target=lambda: other.update(r=chat(c, model="t", **LONG)))
        runner.start()
        stream = c.chat.completions.create(model="t", messages=[{"role": "user", "content": "the dog"}],
                                           stream=True, **LONG)
        for _, _chunk in zip(range(5), stream):
            pass
        started = time.perf_counter()  # the runner's request may still be on its way: both must be running
        while health(url)["busy"] < 2:
            assert runner.is_alive() and time.perf_counter() - started < 10, "the two requests never ran together"
            time.sleep(0.005)
        stream.close()  # the client goes away mid-stream
        closed = time.perf_counter()
        while health(url)["busy"] > 1:
            assert time.perf_counter() - closed < 5
            time.sleep(0.005)
        freed = time.perf_counter() - closed
        assert runner.is_alive()  # the other request is still going: the freed slot is the stream's
        runner.join()
        assert freed <= 0.5, f"slot freed after {freed:.2f} s"
        assert [x.message.content for x in other["r"].choices] == expected  # untouched by the disconnect
        metrics = get(url + "/metrics")[2].decode()
        assert 'tinytitan_generation_requests_total{model="t",outcome="cancelled",route="chat"} 1.0' in metrics


def routes(router) -> list:
    """Every route of an app or router, those of included routers (the playground's) among them."""
    found = []
    for route in router.routes:
        inner = getattr(route, "original_router", None)
        found += routes(inner) if inner is not None else [route]
    return found


def test_api_key_guards_every_route_but_health_and_the_page(server):
    url, app = server
    paths = sorted({(r.path, m) for r in routes(app) for m in getattr(r, "methods", ()) if m in ("GET", "POST")})
    assert len(paths) >= 12 and ("/playground/check", "POST") in paths
    bodies = {"/v1/chat/completions": {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
              "/v1/completions": {"model": "base", "prompt": "hi", "max_tokens": 1},
              "/playground/check": {"model": "base", "text": "{}"}}
    for path, method in paths:
        path = path.replace("{model}", "base")
        body = bodies.get(path)
        for key in (None, "wrong"):
            status, _, answer = get(url + path, key=key, method=method, body=body)
            if path in ("/health", "/"):  # the probe, and the playground page (no data; it asks for the key)
                assert status == 200
            else:
                assert status == 401, (path, key)
                assert json.loads(answer)["error"]["code"] == "invalid_api_key"
        status, _, answer = get(url + path, key=KEY, method=method, body=body)
        if path == "/playground/report/base":  # a task given by a fleet file without a report
            assert status == 404 and json.loads(answer)["error"]["code"] == "report_not_found"
        else:
            assert status == 200, path


def test_default_bind_is_loopback(fleet):
    import subprocess
    import sys

    from tinytitan.serve.serve import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).host == "127.0.0.1"
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tinytitan", "serve", "--task", f"t={fleet / 'base.gguf'}",
                                "--port", str(port), "--ctx", "256"], stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        assert f"http://127.0.0.1:{port}/v1" in line
        deadline = time.time() + 60
        while True:
            with contextlib.suppress(urllib.error.URLError):
                if get(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.1)
        listening = [row.split()[1] for row in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if row.split()[3] == "0A"]  # state LISTEN
        assert f"0100007F:{port:04X}" in listening  # 127.0.0.1 only
        assert f"00000000:{port:04X}" not in listening
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_metrics(server, client):
    chat(client, max_tokens=3)
    text = get(server[0] + "/metrics")[2].decode()
    for name in ("tinytitan_http_requests_total", "tinytitan_generation_requests_total",
                 "tinytitan_request_seconds_bucket", "tinytitan_time_to_first_token_seconds_bucket",
                 "tinytitan_queue_depth", "tinytitan_slots_busy", "tinytitan_completion_tokens_total"):
        assert name in text, name
    assert 'tinytitan_http_requests_total{route="/v1/chat/completions",status="200"}' in text


