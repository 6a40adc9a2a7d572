"""Every notebook in nbs/ executes end to end on a tiny real subset (papermill injects the parameters)."""

from pathlib import Path

import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))


def test_one_notebook_per_chapter_section_then_the_exercises():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.slow
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(nb: Path, imagenette, mnist_tiny, tmp_path):
    papermill = pytest.importorskip("papermill", reason="papermill is a dev dependency: pip install -e .[dev]")
    params = dict(data=str(imagenette), size=32, presize=40, epochs=1, bs=8, subset=8, classes=2, seed=0)
    if "mnist_data" in nb.read_text():
        params["mnist_data"] = str(mnist_tiny)
    if "seeds = None" in nb.read_text():
        params["seeds"] = [0]
    if "pretrained = True" in nb.read_text():  # no network here: a timm ResNet-D's random weights, as a local file
        timm = pytest.importorskip("timm")
        from safetensors.torch import save_file

        net = timm.create_model("resnet18d", pretrained=False)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
        params["pretrained"] = str(tmp_path / "w.safetensors")
    if "num_workers = None" in nb.read_text():  # 16 images: worker processes cost more than they save
        params["num_workers"] = 0
    out = papermill.execute_notebook(str(nb), str(tmp_path / nb.name), parameters=params, cwd=str(tmp_path),
                                     kernel_name="python3", progress_bar=False)  # fmt: skip
    # a failing cell raises PapermillExecutionError above
    text = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    if "run(" in nb.read_text():
        # the tiny subset is not the book's setting, so the summary says why it is not set beside the book's figure
        assert "accuracy" in text, "the run printed its summary"
        if "speedrun" not in nb.stem:  # the speedrun has no book figure of its own
            assert "not compared with the book" in text, "at the tiny settings the summary says why not"
        assert list(tmp_path.glob("runs/*/results.json")), "the run saved its results"
    if "run_study(" in nb.read_text():
        assert len(list(tmp_path.glob("runs/study-*/study.json"))) == 4, "every study saved its table"
