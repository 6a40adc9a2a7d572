"""resnets.recipes: the chapter's experiments, frozen and versioned, and how `configure` applies overrides to them."""

from dataclasses import replace

import pytest

from conftest import BOOK_FINAL
from resnets import CHAPTER, EXPERIMENTS, InputError, configure, get_experiment, list_experiments, run
from resnets.models import MODELS


def test_registry_is_the_chapters_five_experiments_then_the_exercises():
    assert list(CHAPTER) == list(BOOK_FINAL) == list_experiments()[:5]
    assert list_experiments()[5:] == ["resnet34", "mnist_pool", "mnist_flat", "plain20", "plain56", "res20", "res56",
                                      "speedrun-v1", "speedrun-v2", "speedrun-v3", "speedrun10-v1", "speedrun10-v2",
                                      "speedrun10-v3", "speedrun10-v4", "speedrun10-v5", "speedrun",
                                      "speedrun10"]
    assert all(not EXPERIMENTS[n].book_accuracy for n in list_experiments()[5:])
    for name, acc in BOOK_FINAL.items():
        e = get_experiment(name)
        assert e.model in MODELS
        assert e.book_accuracy[-1] == acc and len(e.book_accuracy) == e.epochs
        assert e.lr == 3e-3 and e.bs is None  # the chapter's 128 on Imagenette (data.choose_bs)
    r50 = EXPERIMENTS["resnet50"]
    assert (r50.epochs, r50.presize, r50.size, r50.data) == (20, 320, 224, "imagenette-320")
    assert max(r50.book_accuracy) == 0.8759
    assert all((e.epochs, e.presize, e.size, e.data) == (5, 160, 128, "imagenette-160")
               for n, e in EXPERIMENTS.items() if n in CHAPTER[:4])


def test_experiments_are_frozen():
    with pytest.raises(AttributeError):
        EXPERIMENTS["cnn"].epochs = 1


def test_one_rule_for_presize_and_size(capsys):
    from resnets import configure

    exp = configure("resnet18", size=192)  # larger than the chapter's presize: the experiment's ratio, said aloud
    assert (exp.presize, exp.size) == (240, 192) and "presize 240 for size 192" in capsys.readouterr().out
    assert configure("resnet18", size=64, presize=80).presize == 80, "an explicit presize is kept"
    with pytest.raises(ValueError, match=r"size \(64\) is larger than presize \(40\): use a presize of at least 64"):
        configure("resnet18", size=64, presize=40)  # an explicit presize is never replaced


def test_unknown_experiment_lists_the_valid_ones():
    with pytest.raises(ValueError, match="cnn, res_cnn, double_res_cnn, resnet18, resnet50, resnet34, mnist_pool"):
        run("resnet19")


def test_a_size_given_alone_replaces_a_progressive_schedule(capsys):
    tested_larger = replace(get_experiment("speedrun10"), test_size=112)  # a recipe with a schedule and a test size
    sized = configure(tested_larger, size=32, presize=112)  # the test size is the user's to change: it stays
    assert sized.sizes == () and sized.size == 32 and sized.valid_size == 112 and sized.test_size == 112
    assert "size 32 throughout" in capsys.readouterr().out
    with pytest.raises(InputError, match=r"test_size \(112\) is larger than presize \(40\)"):
        configure(tested_larger, size=32, presize=40)
    assert configure(tested_larger, verbose=False).test_size == 112
    assert configure("speedrun10", verbose=False).sizes, "the recipe itself keeps its schedule"
    assert configure("speedrun10", verbose=False, sizes=(32, 40), presize=48).size == 40
