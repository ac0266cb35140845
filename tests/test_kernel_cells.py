"""Cells the way JupyterLab runs them: each execute request carries the cell's id in its
metadata (``cellId``), which ipykernel hands to IPython (issue 10, item 7)."""
from __future__ import annotations

import pytest
from jupyter_client.manager import start_new_kernel


@pytest.fixture
def kernel(tmp_path):
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run(kc, code: str, cell_id: str) -> tuple[str, str]:
    """Execute ``code`` as cell ``cell_id``: (status, everything it printed)."""
    msg = kc.session.msg("execute_request", {
        "code": code, "silent": False, "store_history": True, "user_expressions": {},
        "allow_stdin": False, "stop_on_error": True}, metadata={"cellId": cell_id})
    kc.shell_channel.send(msg)
    msg_id = msg["header"]["msg_id"]
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


def test_renaming_a_stage_cell_in_a_kernel_replaces_its_stage(kernel):
    assert run(kernel, "%load_ext pipelite", "c0")[0] == "ok"
    assert run(kernel, "%%stage prep\nclean = [1, 2]\n", "c1")[0] == "ok"
    status, text = run(kernel, "%%stage prepare\nclean = [1, 2, 3]\n", "c1")
    assert status == "ok", text
    assert "this cell defined stage 'prep', now 'prepare'" in text
    status, text = run(kernel, "%%stage other\nclean = [0]\n", "c2")
    assert status == "error" and "DuplicateProducerError" in text and "'prepare'" in text
