"""resnets: the ResNets chapter of the fastai book (Deep Learning for Coders, ch. 14) as a library.

Names are imported when first used (PEP 562): `import resnets` and `resnets --help` do not wait for torch
and fastai; `resnets.run`, `resnets.get_data` ... bring them in.
"""

import importlib
import warnings

__version__ = "0.2.0"

# fastai's import calls torch.jit.script, which torch 2.10+ flags as deprecated: noise for our users.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning)

_MODULES = {
    "errors": ["InputError", "MissingFile", "RunExists"],
    "config": ["PRECISIONS", "OPTIONS", "Experiment"],
    "recipes": ["CHAPTER", "EXPERIMENTS", "configure", "get_experiment", "list_experiments", "STUDIES", "Arm", "Study",
                "get_study", "list_studies"],
    "labels": ["IMAGENETTE_NAMES", "class_label"],
    "sources": ["SOURCES", "DataError", "data_folders", "local_copy", "resolve_source"],
    "data": ["find_items", "get_data"],
    "layers": ["CONV_PATHS", "ResBlock", "SimpleResBlock", "avg_pool", "conv1x1_einsum", "basic_convs",
               "bottleneck_convs", "stem"],
    "learner": ["accuracy_metric", "get_learner", "top_5_accuracy", "top_5_metric", "top_k_accuracy"],
    "precision": ["choose_precision"],
    "models": ["MODELS", "ChapterCNN", "DepthNet", "ResNet", "cnn_block", "count_flops", "create_model", "list_models",
               "resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"],
    "training": ["build", "lr_find", "run", "interpret_run"],
    "evaluate": ["Interpretation", "interpret", "flip_tta", "recalibrate_bn"],
    "results": ["Results", "compare", "load_results"],
    "deploy": ["Predictor", "export", "export_torchscript", "load"],
    "studies": ["StudyResults", "run_study"],
    "finetune": ["body_head_splitter", "load_body"],
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'resnets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
