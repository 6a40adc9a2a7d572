"""resnets.evaluate: flip TTA and what a run shows about its mistakes (confusion matrix, top losses, per-class
accuracy, `resnets interpret`)."""


from pathlib import Path

import pytest
import torch
from fastai.interpret import ClassificationInterpretation

from conftest import TINY
from resnets import build, run
from resnets.cli import main
from resnets.evaluate import Interpretation, flip_tta, flip_tta_accuracy
from resnets.precision import device_autocast


def test_every_run_draws_its_mistakes_and_records_per_class_accuracy(tiny_resnet):
    assert (tiny_resnet / "confusion_matrix.png").stat().st_size > 1000
    assert (tiny_resnet / "top_losses.png").stat().st_size > 1000
    import json

    r = json.loads((tiny_resnet / "results.json").read_text())
    per_class = r["per_class_accuracy"]
    assert set(per_class) == {"tench", "English springer"}, "named by their readable names"
    n = r["settings"]["n_valid"] // 2  # 6 validation images of each class
    assert sum(a * n for a in per_class.values()) / (2 * n) == pytest.approx(r["history"][-1]["accuracy"])


def test_the_confusion_matrix_is_fastais(imagenette):
    learn, _ = build("cnn", data=imagenette, verbose=False, **{**TINY, "classes": 3})
    with learn.no_bar():
        ours, theirs = Interpretation.from_learner(learn), ClassificationInterpretation.from_learner(learn)
        assert (ours.confusion_matrix() == theirs.confusion_matrix()).all()
        assert torch.allclose(ours.losses, theirs.losses)
    assert ours.confusion_matrix().sum() == len(learn.dls.valid_ds)


def test_resnets_interpret_redraws_a_run(tiny_resnet, capsys):
    for f in ("confusion_matrix.png", "top_losses.png"):
        (tiny_resnet / f).unlink()
    assert main(["interpret", str(tiny_resnet), "-k", "4"]) == 0
    out = capsys.readouterr().out
    assert "tench" in out and "English springer" in out and "%" in out
    assert (tiny_resnet / "confusion_matrix.png").exists() and (tiny_resnet / "top_losses.png").exists()
    assert main(["interpret", str(tiny_resnet.parent / "missing")]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_flip_tta_averages_an_image_and_its_mirror(imagenette):
    learn, _ = build("cnn", data=imagenette, verbose=False, **TINY)
    model = learn.model.eval()
    hits = 0
    with torch.no_grad():
        for xb, yb in learn.dls.valid:
            x = xb.as_subclass(torch.Tensor)
            p = model(x).softmax(1) + model(torch.flip(x, [3])).softmax(1)
            hits += (p.argmax(1) == yb.as_subclass(torch.Tensor)).sum().item()
    assert flip_tta_accuracy(learn) == hits / 16
    r = run("cnn", data=imagenette, save=False, progress=False, tta=True, **TINY)
    assert r.tta_accuracy is not None and 0 <= r.tta_accuracy <= 1 and "flip TTA" in r.summary()


def test_flip_tta_reuses_the_last_validation(imagenette):
    "A fit's last validation, kept: the same TTA accuracy and logits, from half the forward passes."
    from resnets.callbacks import LastValidPreds
    from resnets.evaluate import flip_tta

    keep = LastValidPreds()
    learn, _ = build("cnn", data=imagenette, verbose=False, cbs=keep, **TINY)
    learn.fit(2)
    assert keep.kept is not None and len(keep.kept[0]) == 16
    calls = []
    hook = learn.model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    reused = flip_tta(learn, keep.kept)
    n_reused, calls[:] = len(calls), []
    fresh = flip_tta(learn)
    hook.remove()
    assert reused[0] == fresh[0] and torch.allclose(reused[1], fresh[1], atol=1e-5) and torch.equal(reused[2], fresh[2])
    assert sum(calls) == 32 and n_reused * 2 == len(calls), "the mirrored images only"
    assert flip_tta(learn, (keep.kept[0][:3], keep.kept[1][:3]))[0] == fresh[0], "a partial set is not reused"


def test_the_interpretation_reuses_the_tta_pass(imagenette):
    "The TTA pass's plain logits give the interpretation get_preds would: the same probabilities, losses, matrix."
    from resnets.evaluate import Interpretation, flip_tta

    learn, _ = build("cnn", data=imagenette, verbose=False, label_smoothing=0.1, **TINY)
    learn.fit(1)
    acc, logits, targs = flip_tta(learn)
    reused, fresh = Interpretation.from_predictions(learn, logits, targs), Interpretation.from_learner(learn)
    assert torch.equal(reused.targs, fresh.targs) and len(reused.losses) == 16
    assert torch.allclose(reused.preds, fresh.preds, atol=1e-5) and torch.allclose(reused.losses, fresh.losses,
                                                                                     atol=1e-5)
    assert (reused.confusion_matrix() == fresh.confusion_matrix()).all()
    with pytest.raises(ValueError, match="3 predictions and 3 targets for 16 images"):
        Interpretation.from_predictions(learn, logits[:3], targs[:3])


def test_flip_tta_and_the_interpretation_of_a_quick_run(generated_run):
    "The quick tier's evaluate check: flip TTA equals averaging the two passes by hand; the plots were drawn."
    learn = generated_run.learn
    acc, logits, targs = flip_tta(learn)
    model, by_hand = learn.model.eval(), []
    with torch.no_grad():
        for xb, _ in learn.dls.valid:
            x = xb.as_subclass(torch.Tensor)
            with device_autocast(learn):  # in the precision it trained in (bf16 on a CPU that has it)
                by_hand.append(model(x).float().softmax(1) + model(x.flip(-1)).float().softmax(1))
    assert acc == pytest.approx((torch.cat(by_hand).argmax(1) == targs).float().mean().item())
    assert logits.shape == (len(learn.dls.valid_ds), 2)
    assert (Path(generated_run.folder) / "confusion_matrix.png").stat().st_size > 1000
    assert set(generated_run.per_class_accuracy) == {"cat", "dog"}


def test_flip_tta_averages_each_image_with_its_left_right_mirror(tree):
    """The probabilities TTA averages, image by image: each validation image's and its horizontal mirror's (a vertical
    flip, or another image's, would give other probabilities on a model that tells them apart)."""
    learn, _ = build("cnn", data=tree, verbose=False, size=32, presize=32, bs=4, num_workers=0, seed=0,
                     precision="fp32")
    model, seen = learn.model.eval(), []
    hook = model.register_forward_hook(lambda m, i, o: seen.append((i[0].detach().clone(), o.detach().float())))
    acc, logits, targs = flip_tta(learn)
    hook.remove()
    plain, mirrored = seen[0::2], seen[1::2]  # per batch: the images, then their mirrors
    for (x, _), (xm, _) in zip(plain, mirrored):
        assert torch.equal(xm, torch.flip(x, [3])) and not torch.equal(xm, torch.flip(x, [2]))
    probs = logits.softmax(1) + torch.cat([o for _, o in mirrored]).softmax(1)
    with torch.no_grad():
        x = torch.cat([x for x, _ in plain])
        expected = model(x).softmax(1) + model(x.flip(3)).softmax(1)
    assert torch.allclose(probs, expected, atol=1e-5)
    assert acc == (expected.argmax(1) == targs).float().mean().item()


def _interpretation(vocab, targs, preds) -> Interpretation:
    "An Interpretation of given predictions (class indices), without a learner: what its summaries read."
    interp = Interpretation.__new__(Interpretation)
    interp.vocab, interp.targs = vocab, torch.tensor(targs)
    interp.preds = torch.nn.functional.one_hot(torch.tensor(preds), len(vocab)).float()
    return interp


def test_the_most_confused_pairs_and_per_class_accuracy_are_counted_without_the_matrix():
    "fastai's own most_confused (from the n x n matrix) and the matrix's diagonal give what the O(images) counts give."
    vocab = ["a", "b", "c", "d"]
    targs = [0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 1]
    preds = [1, 1, 0, 0, 2, 2, 1, 0, 2, 2, 0]
    interp = _interpretation(vocab, targs, preds)
    assert interp.most_confused(k=10) == ClassificationInterpretation.most_confused(interp)
    assert interp.most_confused(k=10) == [("a", "b", 2), ("b", "a", 2), ("b", "c", 2), ("a", "c", 1), ("c", "a", 1)]
    assert interp.most_confused(k=2) == [("a", "b", 2), ("b", "a", 2)]
    assert interp.per_class_accuracy() == {"a": 1 / 4, "b": 1 / 5, "c": 1 / 2}, "d has no image: left out"


def test_a_run_with_1000_classes_finishes_with_a_summary_of_its_mistakes(tmp_path, capsys):
    """Every after-training step scales with the classes: 1,000 of them (tiny images) train, interpret and redraw
    in seconds, drawn as the most-confused pairs and sorted accuracies, not a 1,000 x 1,000 matrix of cells."""
    from conftest import make_tree

    data = make_tree(tmp_path / "data", classes=[f"c{i:04d}" for i in range(1000)], n_train=1, n_valid=1)
    # (32 px: at 16 the last stage sees 1 x 1 maps, and bf16 on a CPU left NaN in a 3 x 3 conv's padding-only taps,
    # harmless at that size, which the checkpoint check rightly refuses: see docs/guide.md)
    r = run("resnet18", data=data, out=tmp_path / "run", size=32, presize=32, width=0.25, epochs=1, bs=64,
            fast_data=True, progress=False, num_workers=0, seed=0)
    folder = Path(r.folder)
    assert r.finished and len(r.per_class_accuracy) == 1000
    assert (folder / "most_confused.png").stat().st_size > 1000 and (folder / "top_losses.png").exists()
    assert not (folder / "confusion_matrix.png").exists()
    (folder / "most_confused.png").unlink()
    capsys.readouterr()
    assert main(["interpret", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "the 30 worst of 1000 classes" in out and len(out.splitlines()) < 40
    assert (folder / "most_confused.png").exists()


def test_a_failed_interpretation_leaves_the_trained_run_finished_and_saved(tmp_path, monkeypatch, capsys):
    "The extras after training come after the record: their failure is one line, and `resnets interpret` redoes them."
    from conftest import make_tree
    from resnets import training
    from resnets.results import load_results

    def fail(*args, **kwargs):
        raise MemoryError("drawing ran out of memory")

    data = make_tree(tmp_path / "data", n_train=4, n_valid=2)
    monkeypatch.setattr(training, "interpret", fail)
    r = run("cnn", data=data, out=tmp_path / "run", size=32, presize=32, bs=4, epochs=1, progress=False,
            num_workers=0, seed=0)
    err = capsys.readouterr().err
    assert "trained and saved" in err and "drawing ran out of memory" in err and "resnets interpret" in err
    saved = load_results(tmp_path / "run")
    assert saved.finished and len(saved.history) == 1 and saved.per_class_accuracy == {} and r.finished
    monkeypatch.undo()
    assert main(["interpret", str(tmp_path / "run")]) == 0
    assert set(load_results(tmp_path / "run").per_class_accuracy) == {"cat", "dog"}
    again = run("cnn", data=data, out=tmp_path / "run", resume=True, size=32, presize=32, bs=4, epochs=1,
                progress=False, num_workers=0, seed=0)
    assert again.finished and again.history == saved.history, "finished: a resume trains nothing more"


@pytest.mark.parametrize("before", ["4", None])
def test_one_process_turns_fastais_gathers_off_and_puts_world_size_back(monkeypatch, before):
    "WORLD_SIZE is 1 inside (fastai's num_distrib reads it), and as it was after: set, or unset, even after an error."
    import os

    from fastai.torch_core import num_distrib

    from resnets.evaluate import one_process

    if before is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", before)
    with one_process():
        assert os.environ["WORLD_SIZE"] == "1" and num_distrib() == 1  # (fastai gathers when it is > 1)
    assert os.environ.get("WORLD_SIZE") == before
    with pytest.raises(RuntimeError), one_process():
        raise RuntimeError("a failed prediction")
    assert os.environ.get("WORLD_SIZE") == before
