"""The opt-in kernelspec "Python 3 (PipeLite)": shipped in the wheel, installed with the
package, and its kernels have the magics without %load_ext."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import zipfile

from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from tests.helpers import printed

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPEC = ROOT / "jupyter-config" / "kernels" / "pipelite" / "kernel.json"


def test_the_wheel_ships_the_kernelspec_as_shared_data(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("pipelite-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = [n for n in zf.namelist()
                   if n.endswith(".data/data/share/jupyter/kernels/pipelite/kernel.json")]
        assert len(shipped) == 1, zf.namelist()
        assert json.loads(zf.read(shipped[0])) == json.loads(SPEC.read_text())


def test_the_installed_environment_lists_the_kernelspec():
    specs = KernelSpecManager().get_all_specs()
    assert "pipelite" in specs, "reinstall: pip install -e '.[test]'"
    spec = specs["pipelite"]
    assert spec["spec"]["display_name"] == "Python 3 (PipeLite)"
    assert "--ext=pipelite" in spec["spec"]["argv"]
    # installed by the package into this environment, and matching the repository's copy
    installed = pathlib.Path(spec["resource_dir"]).resolve()
    assert installed == (pathlib.Path(sys.prefix) / "share/jupyter/kernels/pipelite").resolve()
    assert json.loads((installed / "kernel.json").read_text()) == json.loads(SPEC.read_text())


def test_a_notebook_on_the_pipelite_kernel_has_the_magics_without_load_ext(tmp_path):
    nb = new_notebook(cells=[
        new_code_cell("%%stage hello\ngreeting = 'hi from a stage'\nprint(greeting)"),
        new_code_cell("%%stage hello\ngreeting = 'hi from a stage'\nprint(greeting)"),
        new_code_cell("import os\nprint(os.listdir('.pipelite'))"),
    ])
    NotebookClient(nb, timeout=120, kernel_name="pipelite",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = [printed(c) for c in nb.cells]
    assert text[0].startswith("hi from a stage\n[pipelite] hello: ran in")
    assert text[1].startswith("hi from a stage\n[pipelite] hello: loaded from store")
    assert "records" in text[2]
    assert os.path.isdir(tmp_path / ".pipelite")


def test_an_ipython_profile_can_load_the_extension_for_every_session(tmp_path):
    """The README's other way: c.InteractiveShellApp.extensions in ipython_config.py."""
    import subprocess
    import sys

    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_config.py").write_text(
        'c.InteractiveShellApp.extensions = ["pipelite"]\n')
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}
    done = subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", "-c", "%pipelite status"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "UsageError" not in done.stdout + done.stderr
    assert "no stages yet" in done.stdout
