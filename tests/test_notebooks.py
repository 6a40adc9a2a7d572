"""Every notebook in nbs/ executes end to end on a tiny real subset (papermill injects the parameters), and as a reader
runs it, committed (Run All: nothing injected)."""

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "nbs").glob("[0-9]*.ipynb"))


def test_one_notebook_per_chapter_section_then_the_exercises():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.slow
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(nb: Path, imagenette, mnist_tiny, tmp_path):
    papermill = pytest.importorskip("papermill", reason="papermill is a dev dependency: pip install -e .[dev]")
    # the tiny setting the parameters cells name, the batch size left to the library (128 would be no batch of 16)
    params = dict(data=str(imagenette), size=32, presize=40, epochs=1, subset=8, classes=2, seed=0)
    if "mnist_data" in nb.read_text():
        params["mnist_data"] = str(mnist_tiny)
    if "seeds = None" in nb.read_text():
        params["seeds"] = [0]
    if "pretrained = True" in nb.read_text():  # no network here: a timm ResNet-D's random weights, as a local file
        pytest.importorskip("timm")
        params["pretrained"] = str(_runner()._random_weights(tmp_path))
    if "num_workers = None" in nb.read_text():  # 16 images: worker processes cost more than they save
        params["num_workers"] = 0
    out = papermill.execute_notebook(str(nb), str(tmp_path / nb.name), parameters=params, cwd=str(tmp_path),
                                     kernel_name="python3", progress_bar=False)
    # a failing cell raises PapermillExecutionError above
    text = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    if "run(" in nb.read_text():
        assert list(tmp_path.glob("runs/*/results.json")), "the run saved its results"
    if ".summary()" in nb.read_text():
        # the tiny subset is not the book's setting, so the summary says why it is not set beside the book's figure
        assert "accuracy" in text, "the run printed its summary"
        if "speedrun" not in nb.stem:  # the speedrun has no book figure of its own
            assert "not compared with the book" in text, "at the tiny settings the summary says why not"
    if "run_study(" in nb.read_text():
        code = "".join("".join(c.source) for c in out.cells if c.cell_type == "code")
        studies = len(re.findall(r'\bshow\("', code)) or len(re.findall(r'run_study\("', code))
        assert len(list(tmp_path.glob("runs/study-*/study.json"))) == studies, "every study saved its table"


def _runner():
    "scripts/notebooks.py, the script that executes the notebooks at full settings and checks them."
    spec = importlib.util.spec_from_file_location("notebooks_script", ROOT / "scripts" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_committed_outputs_are_their_runs(nb: Path):
    """Every notebook is committed executed from its current source, under 1 MiB, with no error, and every final
    accuracy it shows is its run's results.json's (and every run's is shown): `python scripts/notebooks.py --check`."""
    assert _runner().check(nb) == []


def test_the_check_catches_a_changed_number_a_changed_source_and_a_missing_run(tmp_path, monkeypatch):
    runner = _runner()
    nb = ROOT / "nbs" / "01_fully_convolutional.ipynb"
    runs = runner.RESULTS / nb.stem
    shutil.copytree(runs, tmp_path / "results" / nb.stem)
    shutil.copy(runner.STATE, tmp_path / "results" / "executed.json")
    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(runner, "STATE", tmp_path / "results" / "executed.json")
    assert runner.check(nb) == []
    (acc,) = {a for a, _ in runner.NUMBER.findall(runner.outputs_text(json.loads(nb.read_text())))}
    wrong = f"{float(acc) + 0.0001:.4f}"
    edited = tmp_path / nb.name
    edited.write_text(nb.read_text().replace(f"accuracy {acc} after", f"accuracy {wrong} after"))
    problems = runner.check(edited)
    assert any(acc in p and "not in its outputs" in p for p in problems)
    assert any(wrong in p and "no results.json" in p for p in problems)
    edited.write_text(nb.read_text().replace("## The model", "## A model"))  # prose: the outputs still hold
    assert runner.check(edited) == []
    code = "model = resnets.create_model('cnn')"
    edited.write_text(nb.read_text().replace(code, code[:-1] + ", n_out=2)"))
    assert any("code changed" in p for p in runner.check(edited))
    shutil.rmtree(tmp_path / "results" / nb.stem)
    assert any("no results.json" in p for p in runner.check(nb))


def test_the_docs_table_of_the_notebooks_is_the_runner_s():
    "docs/results.md shows each notebook's time and runs as `python scripts/notebooks.py --table` prints them."
    assert _runner().table() in (ROOT / "docs" / "results.md").read_text()


def test_the_runner_skips_what_it_executed_from_the_same_source_and_goes_on_after_a_failure(tmp_path, monkeypatch):
    "Resumable notebook by notebook: a notebook executed from its current source is not executed again."
    runner = _runner()
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    for name in ("01_fully_convolutional.ipynb", "02_resblocks.ipynb", "03_resnet18.ipynb"):
        shutil.copy(ROOT / "nbs" / name, nbs / name)
    monkeypatch.setattr(runner, "NBS", nbs)
    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(runner, "STATE", tmp_path / "results" / "executed.json")
    monkeypatch.setattr(runner, "check", lambda nb: [])
    executed = []

    def fake(nb_path, reuse=None):
        executed.append(nb_path.stem)
        if nb_path.stem.startswith("02"):
            raise RuntimeError("a cell failed")
        return {"source": runner.source_hash(json.loads(nb_path.read_text())), "seconds": 1.0, "finished": "now"}

    monkeypatch.setattr(runner, "execute", fake)
    assert runner.main([]) == 1  # 02 failed; 03 still ran
    assert executed == ["01_fully_convolutional", "02_resblocks", "03_resnet18"]
    executed.clear()
    assert runner.main([]) == 1 and executed == ["02_resblocks"]  # only what is not done from its source
    nb = json.loads((nbs / "03_resnet18.ipynb").read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["source"] = "# changed\n" + "".join(code["source"])
    (nbs / "03_resnet18.ipynb").write_text(json.dumps(nb))
    executed.clear()
    runner.main(["03"])
    assert executed == ["03_resnet18"]


def test_the_check_catches_a_number_in_the_prose_that_no_output_shows(tmp_path):
    runner = _runner()
    nb = ROOT / "nbs" / "03_resnet18.ipynb"
    edited = tmp_path / nb.name
    data = json.loads(nb.read_text())
    data["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "This run reached 0.9999."})
    edited.write_text(json.dumps(data))
    assert any("0.9999" in p and "none of its outputs" in p for p in runner.check(edited))


def test_the_check_catches_a_study_row_that_is_not_its_runs_mean(tmp_path, monkeypatch):
    runner = _runner()
    nb = ROOT / "nbs" / "06_claims.ipynb"
    shutil.copytree(runner.RESULTS / nb.stem, tmp_path / "results" / nb.stem)
    shutil.copy(runner.STATE, tmp_path / "results" / "executed.json")
    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(runner, "STATE", tmp_path / "results" / "executed.json")
    assert runner.check(nb) == []
    path = tmp_path / "results" / nb.stem / "study-zero_gamma" / "study.json"
    study = json.loads(path.read_text())
    study["rows"][0]["accuracy"] += 0.01
    path.write_text(json.dumps(study))
    problems = runner.check(nb)
    assert any("not the mean of its runs" in p for p in problems) and any("not in its outputs" in p for p in problems)


def test_the_runner_reads_the_parameters_cell_and_refuses_a_training_notebook_without_out(tmp_path):
    runner = _runner()
    nb = json.loads((ROOT / "nbs" / "03_resnet18.ipynb").read_text())
    assert {"data", "size", "out", "fast_data", "seed"} <= runner.parameters(nb)
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    cell["source"] = "".join(cell["source"]).replace("out = None", "folder = None")
    (tmp_path / "03_resnet18.ipynb").write_text(json.dumps(nb))
    with pytest.raises(ValueError, match="no `out` parameter"):
        runner.execute(tmp_path / "03_resnet18.ipynb")


def _cell(nb: dict, tag: str) -> str:
    return "".join(next((c["source"] for c in nb["cells"] if tag in c["metadata"].get("tags", [])), ""))


def _settings(nb: dict) -> tuple[dict, dict]:
    "What the parameters cell sets, and what Run All has set once past the injected cell too."
    chosen = {}
    exec(_cell(nb, "parameters"), chosen)
    ran = dict(chosen)
    exec(_cell(nb, "injected-parameters"), ran)
    return chosen, ran


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_run_all_on_a_committed_notebook_takes_its_parameters_cell_not_the_runner_s(nb: Path):
    """Run All runs the injected cell too: it must leave the parameters cell's settings, so that a reader's runs go
    into a new folder (out None), not into the committed runs (RunExists), and 08 starts from ImageNet's weights,
    not from the runner's random weights file, which git ignores."""
    chosen, ran = _settings(json.loads(nb.read_text()))
    assert ran == chosen


def _strings(value):
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_committed_notebooks_metadata_names_no_path_of_the_machine_that_ran_them(nb: Path):
    assert [s for s in _strings(json.loads(nb.read_text())["metadata"]) if os.path.isabs(s)] == []


def test_the_runner_comments_out_what_it_injected_and_keeps_paths_relative():
    "What execute() writes: the injected values still shown (commented), papermill's paths from the checkout's root."
    papermill = pytest.importorskip("papermill", reason="papermill is a dev dependency: pip install -e .[dev]")
    runner = _runner()
    path = ROOT / "nbs" / "08_pretrained.ipynb"
    weights = "../results/notebooks/08_pretrained/resnet18d-random-weights.safetensors"
    nb = papermill.parameterize.parameterize_notebook(papermill.iorw.load_notebook_node(str(path)),
                                                      {"out": "../results/notebooks/08_pretrained",
                                                       "pretrained": weights})
    papermill.execute.prepare_notebook_metadata(nb, str(path), str(runner.RESULTS / ".08_pretrained.executing.ipynb"))
    before = runner.source_hash(nb)
    runner.for_readers(nb, path)
    injected = _cell(nb, "injected-parameters")
    assert f'# pretrained = "{weights}"' in injected and "RunExists" in injected
    chosen, ran = _settings(nb)
    assert ran == chosen
    assert nb.metadata.papermill.input_path == nb.metadata.papermill.output_path == "nbs/08_pretrained.ipynb"
    assert nb.metadata.papermill.parameters["pretrained"] == weights  # the record of what ran is kept
    assert runner.source_hash(nb) == before  # the committed outputs still count as this code's


@pytest.mark.slow
def test_run_all_in_a_clone_writes_a_new_run_beside_the_committed_one(imagenette, tmp_path):
    """A reader's Run All on nbs/01 as committed (its injected cell left in, nothing injected anew), the tiny setting
    its parameters cell names typed into it, in a checkout where the injected `out` holds the committed finished run."""
    nbclient = pytest.importorskip("nbclient", reason="nbclient comes with papermill, a dev dependency")
    nbformat = pytest.importorskip("nbformat")
    nb_path = ROOT / "nbs" / "01_fully_convolutional.ipynb"
    committed = tmp_path / "results" / "notebooks" / nb_path.stem / "cnn"
    committed.mkdir(parents=True)
    shutil.copy(_runner().RESULTS / nb_path.stem / "cnn" / "results.json", committed)
    nb = nbformat.read(nb_path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += f"\ndata, size, epochs, subset, classes, num_workers = {str(imagenette)!r}, 32, 1, 8, 2, 0\n"
    (tmp_path / "nbs").mkdir()
    client = nbclient.NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": str(tmp_path / "nbs")}})
    client.execute()  # a failing cell raises CellExecutionError (RunExists, no batches, ...)
    assert len(list((tmp_path / "nbs" / "runs").glob("cnn-*/results.json"))) == 1, "a new run, in a new folder"
    assert [p.name for p in committed.iterdir()] == ["results.json"], "the committed run is left as it was"


def test_a_run_trained_elsewhere_is_reused_only_when_finished(generated_run, tmp_path):
    "--reuse NAME=DIR: a finished run copied in as the notebook's run NAME (checkpoint too); an unfinished one refused."
    runner, src = _runner(), Path(generated_run.folder)
    runner._reuse(tmp_path / "nb", {"resnet50": src})
    assert (tmp_path / "nb" / "resnet50" / "results.json").read_bytes() == (src / "results.json").read_bytes()
    assert {p.name for p in (tmp_path / "nb" / "resnet50").iterdir()} == {p.name for p in src.iterdir()}
    partial = tmp_path / "partial"
    shutil.copytree(src, partial)
    record = json.loads((partial / "results.json").read_text())
    (partial / "results.json").write_text(json.dumps({**record, "finished": False}))
    with pytest.raises(ValueError, match="not a finished run"):
        runner._reuse(tmp_path / "nb2", {"resnet50": partial})
    assert not (tmp_path / "nb2").exists()


def test_the_table_says_which_runs_a_notebook_reported_rather_than_trained(generated_run, tmp_path, monkeypatch):
    "A reused run's row says it was trained outside the notebook, with its own time in all beside the notebook's."
    runner = _runner()
    monkeypatch.setattr(runner, "RESULTS", tmp_path)
    monkeypatch.setattr(runner, "STATE", tmp_path / "executed.json")
    runner._reuse(tmp_path / "04_bottleneck", {"resnet50": Path(generated_run.folder)})
    state = {"source": "x", "seconds": 65.0, "device": "cpu: test", "reused": ["resnet50"]}
    (tmp_path / "executed.json").write_text(json.dumps({"04_bottleneck": state}))
    row = next(line for line in runner.table().splitlines() if "04_bottleneck" in line)
    minutes = runner._minutes(generated_run.wall_time)
    assert f"| 1 min 05 s | resnet50 {generated_run.accuracy:.4f} (trained outside the notebook" in row
    assert f"its record: {minutes} in all)" in row
    del state["reused"]  # the same run, trained by the notebook itself: no such remark
    (tmp_path / "executed.json").write_text(json.dumps({"04_bottleneck": state}))
    assert "outside" not in runner.table()
    assert runner._minutes(5 * 3600 + 31 * 60 + 20) == "5 h 31 min"
