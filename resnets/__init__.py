"""resnets: the ResNets chapter of the fastai book (Deep Learning for Coders, ch. 14) as a library."""

import warnings

__version__ = "0.1.0"

# fastai's import calls torch.jit.script, which torch 2.10+ flags as deprecated: noise for our users.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning)

from .data import IMAGENETTE_NAMES, SOURCES, DataError, find_items, get_data, resolve_source
from .errors import InputError, MissingFile, RunExists
from .experiments import (
    CHAPTER,
    EXPERIMENTS,
    OPTIONS,
    Experiment,
    build,
    configure,
    get_experiment,
    list_experiments,
    lr_find,
    run,
)
from .export import Predictor, export, export_torchscript, load
from .layers import CONV_PATHS, ResBlock, SimpleResBlock, avg_pool, basic_convs, bottleneck_convs, conv1x1_einsum, stem
from .learner import (
    PRECISIONS,
    accuracy_metric,
    choose_precision,
    get_learner,
    top_5_accuracy,
    top_5_metric,
    top_k_accuracy,
)
from .models import (
    MODELS,
    ChapterCNN,
    DepthNet,
    ResNet,
    cnn_block,
    create_model,
    list_models,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)
from .results import Results, compare, load_results
from .studies import STUDIES, Arm, Study, StudyResults, get_study, list_studies, run_study

__all__ = [
    "__version__", "InputError", "MissingFile", "RunExists",
    "IMAGENETTE_NAMES", "SOURCES", "DataError", "find_items", "get_data", "resolve_source",
    "CONV_PATHS", "ResBlock", "SimpleResBlock", "avg_pool", "conv1x1_einsum", "basic_convs", "bottleneck_convs", "stem",
    "PRECISIONS", "accuracy_metric", "choose_precision", "get_learner", "top_5_accuracy", "top_5_metric",
    "top_k_accuracy",
    "MODELS", "ChapterCNN", "DepthNet", "ResNet", "cnn_block", "create_model", "list_models",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "CHAPTER", "EXPERIMENTS", "OPTIONS", "Experiment", "build", "configure", "get_experiment", "list_experiments",
    "lr_find", "run",
    "Results", "compare", "load_results",
    "Predictor", "export", "export_torchscript", "load",
    "STUDIES", "Arm", "Study", "StudyResults", "get_study", "list_studies", "run_study",
]  # fmt: skip
