"""resnets.synthetic: an Imagenette-shaped folder of generated images that the chapter's pipeline reads."""

from resnets import IMAGENETTE_NAMES, get_data
from resnets.synthetic import make_synthetic


def test_a_synthetic_folder_is_imagenette_shaped(tmp_path):
    out = make_synthetic(tmp_path / "s", n_train=2, n_valid=1, size=48)
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(IMAGENETTE_NAMES)
    assert len(list((out / "val").rglob("*.JPEG"))) == 10
    dls = get_data(out, presize=40, resize=32, bs=4, num_workers=0)
    assert dls.c == 10 and len(dls.train_ds) == 20 and len(dls.valid_ds) == 10
