"""Test helpers: define code the way a notebook does (source kept in linecache, re-run cells)."""
from __future__ import annotations

import itertools
import linecache
import textwrap

_counter = itertools.count()


def run_cell(source: str, namespace: dict) -> dict:
    """Execute ``source`` like a notebook cell: its source is retrievable by ``inspect``."""
    source = textwrap.dedent(source)
    filename = f"<cell-{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace.setdefault("__name__", "__main__")
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def notebook() -> dict:
    """A fresh namespace standing in for a notebook's globals (``stage`` imported)."""
    from pipelite import stage

    return {"__name__": "__main__", "stage": stage}


def notebook_main(monkeypatch) -> dict:
    """A namespace that is ``sys.modules['__main__'].__dict__``, as IPython's user namespace
    is: pickle then finds notebook functions by reference, as it does in a real notebook."""
    import sys
    import types

    from pipelite import stage

    module = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", module)
    module.__dict__["stage"] = stage
    return module.__dict__


def printed(cell) -> str:
    """What a notebook cell printed, as the user reads it: its streams, and the text a
    ``%%stage`` cell shows through display ids in a notebook kernel (its badge aside)."""
    out = []
    for o in cell.outputs:
        if o["output_type"] == "stream":
            out.append(o["text"])
        elif o["output_type"] == "display_data" and \
                "pipelite-cell-badge" not in o["data"].get("text/html", ""):
            out.append(o["data"].get("text/plain", ""))
    return "".join(out)


def start_moto(bucket: str):
    """A moto S3 server process on 127.0.0.1 with ``bucket``: ``(process, endpoint)``. The
    caller stops it by its PID. (The ``moto_s3`` fixture and ``benchmarks/bench_s3.py``.)"""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start (exit {proc.poll()})") from None
            time.sleep(0.1)
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test"
                 ).create_bucket(Bucket=bucket)
    return proc, endpoint


def send(kc, code: str, cell_id: str | None = None) -> str:
    """Start executing ``code`` in a kernel (as notebook cell ``cell_id``); its message id."""
    msg = kc.session.msg("execute_request", {
        "code": code, "silent": False, "store_history": True, "user_expressions": {},
        "allow_stdin": False, "stop_on_error": True},
        metadata={"cellId": cell_id} if cell_id else {})
    kc.shell_channel.send(msg)
    return msg["header"]["msg_id"]


def outcome(kc, msg_id: str) -> tuple[str, str]:
    """A kernel cell's reply status and what it printed (errors as 'ename: evalue')."""
    text = []
    while True:
        out = kc.get_iopub_msg(timeout=60)
        if out["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = out["msg_type"], out["content"]
        if kind == "stream":
            text.append(content["text"])
        elif kind == "error":
            text.append(f"{content['ename']}: {content['evalue']}")
        elif kind == "status" and content["execution_state"] == "idle":
            break
    while True:
        reply = kc.get_shell_msg(timeout=60)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]["status"], "".join(text)
