"""The ONE definition of the pipeline's DAG.

Every stage is a :class:`Stage` record: the module it runs, the params layers and keys it reads,
its path arguments (inputs and outputs, as templates over the wildcards ``dataset``, ``variant``
and ``split``), the files it declares, its metrics and plots, and its resources.  Paths are pure
functions of (stage, dataset, variant, split) and follow docs/ARCHITECTURE.md "Data artifacts".

``fian_pipeline.render`` turns this list into the Snakemake rules (workflow/rules/*.smk) and dvc.yaml;
the Snakefile imports this module to resolve the run :class:`Plan` from its config.
tests/test_render_drift.py checks that both renderings agree with :func:`instances`.

Which of two alternative stages builds a dataset's artifact is decided per dataset
(:class:`DatasetPlan`): ``generate`` or ``download`` for raw data (config ``source``), ``features``
(import the released files) or ``extract`` (from raw videos) for the store (config ``features``),
``text`` (GloVe) or ``text_fallback`` (GloVe trained on the dataset's own sentences: params
``text.fallback_train_glove``); ``extract`` (with ``backbone.pt``) or ``extract_fallback`` (a
backbone with seeded RANDOM weights, no ``backbone.pt``: params ``extract.allow_random_weights``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fian.config import ConfigError, load_config, load_yaml
from fian.reports.paper_results import REFERENCE_VARIANT

Phase = Literal["data", "features", "model", "reports"]
Layer = Literal["base", "dataset", "variant"]
# which alternative a stage is; a dataset uses a stage only when its plan selects it
# (single / seeds: a config without / with `seeds:`, one run per variant or one per seed)
When = Literal["always", "download", "download_features", "generate", "import", "extract", "extract_fallback", "glove",
               "glove_download", "fallback", "single", "seeds"]

WILDCARDS = ("dataset", "variant", "seed", "split")
# per-dataset values of the plan that appear in paths like wildcards (``{vectors}``: the word-vector
# file, params text.vectors_file or GLOVE_FILE; ``{store}``: the feature store the dataset reads, its
# own or that of params dataset.features_from); Snakemake takes them from PLAN, DVC from each item
PLAN_VARS = ("vectors", "store")
NAME_RE = re.compile(r"^[a-z0-9_]+$")

# fixed artifact locations (docs/ARCHITECTURE.md "Data artifacts")
GLOVE_DIR = "data/raw/glove"
GLOVE_FILE = f"{GLOVE_DIR}/glove.840B.300d.txt"
BASELINE = "prior"  # results/<dataset>/prior/: the moment-prior baseline (not a params variant)
# Tables 1-6 (the paper's) and Table 7 (ours: FIAN beside the moment prior, blind FIAN and the
# video-shuffle check, for every dataset of the config; fian/reports/bias_table.py)
TABLES = tuple(f"reports/table{k}.tex" for k in range(1, 8))
BLIND = "blind"  # params/variants/blind.yaml: FIAN that never sees the video (Table 7)
SHUFFLED_DIR = "shuffled"  # results/<d>/<v>/shuffled/: the video-shuffle check of a variant (stage shuffle)
# beside each table: its Markdown twin, every seed's value (CSV) and where each "ours" cell came from
TABLE_FILES = tuple(t.removesuffix(".tex") + ext for t in TABLES for ext in (".tex", ".md", ".csv", ".provenance.json"))
REFERENCE = REFERENCE_VARIANT  # the variant every ablation is compared with (stage compare; Tables 4-6)


@dataclass(frozen=True)
class Arg:
    """One path argument of a stage command: ``flag path``.

    ``role`` says what the path is to the DAG: ``in`` (a dependency), ``out`` (declared in
    ``Stage.outputs`` as itself or as files under it) or ``value`` (neither, e.g. a split name).
    ``seeds``: dependencies, one per seed of the plan: the path holds ``{seed}`` and the stage has
    no ``seed`` wildcard (the aggregate and compare stages read every seed's run), so the flag takes
    the paths of all the plan's seeds, in the config's order.
    """

    flag: str
    path: str
    role: Literal["in", "out", "value", "seeds"] = "in"


@dataclass(frozen=True)
class Out:
    """A declared output: a file, or a directory the stage fills (Snakemake ``directory()``)."""

    path: str
    kind: Literal["file", "dir"] = "file"
    metric: bool = False  # DVC `metrics:` (JSON)
    plot: bool = False  # DVC `plots:` (CSV)
    plot_xy: tuple[str, str] | None = None  # DVC plot columns (x, y); None: DVC's defaults
    plot_ys: tuple[str, ...] = ()  # more columns drawn against plot_xy[0], one plot each (dvc.yaml `plots:`)
    # `snakemake --report`: a result of the report, with its caption workflow/report/<report>.rst, its
    # category and subcategory (wildcards allowed) and the columns the report's table shows for it
    # (fixed (name, value) pairs, wildcards allowed; or "metrics"/"train": read from the file when the
    # report is made, :func:`report_labels`)
    report: str | None = None
    category: str = ""
    subcategory: str = ""
    labels: tuple[tuple[str, str], ...] | Literal["metrics", "train"] = ()


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline (a Snakemake rule, a DVC stage)."""

    name: str
    module: str  # runs `python -m fian_pipeline.<module>`
    phase: Phase  # which workflow/rules/<phase>.smk holds its rule
    doc: str
    wildcards: tuple[str, ...]  # subset of WILDCARDS, in that order
    layers: tuple[Layer, ...]  # --params layers, in order
    keys: tuple[str, ...]  # params keys it reads (DVC per-stage params; dotted)
    args: tuple[Arg, ...]
    outputs: tuple[Out, ...]
    fixed: tuple[str, ...] = ()  # literal arguments, e.g. ("--kind", "annotations")
    when: When = "always"
    threads: int = 1
    mem_mb: int = 2000
    runtime: int = 30  # minutes (SLURM time limit)
    gpus: int = 0  # GPUs it uses when the config allows GPUs (config `gpus`)
    distributed: bool = False  # with config `gpus: N > 1`: DDP over N GPUs, launched by torchrun
    package: str = "fian_pipeline"  # the command runs `python -m <package>.<module>`
    console: bool = False  # Snakemake: stdout to the console (one line per epoch), stderr to the log
    # Snakemake `localrule`: runs where snakemake runs (a cluster's login node), never submitted to a
    # compute node, which on most clusters has no internet (the downloads)
    local: bool = False

    @property
    def log(self) -> str:
        tail = "-".join("{" + w + "}" for w in self.wildcards) or self.name
        return f"logs/{self.name}/{tail}.log"

    def inputs(self, seeds: Sequence[int] = ()) -> tuple[str, ...]:
        """Dependency templates; a ``seeds`` argument gives one per seed of ``seeds``."""
        return tuple(p for a in self.args if a.role in ("in", "seeds") for p in arg_paths(a, seeds))

    def params_files(self) -> tuple[str, ...]:
        return tuple(LAYER_PATHS[layer] for layer in self.layers)

    def command(self, launcher: str = "python -m", seeds: Sequence[int] | None = None) -> str:
        """The command template; wildcards appear as ``{dataset}``, ``{variant}``, ``{seed}``, ``{split}``.

        ``launcher`` runs the module: ``python -m``, or ``torchrun ... -m`` for DDP (see :func:`launcher`).
        ``seeds``: the plan's seeds, for the ``seeds`` arguments (None: ``{seeds:<flag name>}``, a
        placeholder the Snakemake rendering replaces by the rule's input of that name).
        """
        parts = [f"{launcher} {self.package}.{self.module}"]
        if self.layers:
            parts.append("--params " + " ".join(self.params_files()))
            parts.append(f"--overrides {OVERRIDES_FILE}")
        parts.extend(self.fixed)
        for a in self.args:
            if a.role == "seeds" and seeds is None:
                parts.append(f"{a.flag} {{seeds:{a.flag.lstrip('-').replace('-', '_')}}}")
            else:
                parts.append(f"{a.flag} {' '.join(arg_paths(a, seeds or ()))}")
        return " ".join(parts)


def arg_paths(a: Arg, seeds: Sequence[int]) -> list[str]:
    """The path(s) of an argument: itself, or (role ``seeds``) one per seed."""
    if a.role != "seeds":
        return [a.path]
    return [a.path.replace("{seed}", str(s)) for s in seeds]


LAYER_PATHS: dict[str, str] = {
    "base": "params/base.yaml",
    "dataset": "params/datasets/{dataset}.yaml",
    "variant": "params/variants/{variant}.yaml",
}
# The top layer, after the variant: DVC's default params file, so that `dvc exp run -S train.epochs=5`
# works.  It lists every key of OVERRIDE_KEYS at null (= not set) in git; a key an experiment sets
# wins for every dataset and variant (fian_pipeline.layers; README "Changing params and running experiments").
OVERRIDES_FILE = "params.yaml"
# a dataset's identity: set only in params/datasets/<d>.yaml, never for all datasets at once
DATASET_IDENTITY = ("dataset.name", "dataset.format", "dataset.splits", "dataset.annotation_sources",
                    "dataset.feature_layout", "dataset.feature_sources", "dataset.feature_dim", "dataset.backbone",
                    "dataset.eval_splits", "dataset.features_from")  # fmt: skip


def override_keys() -> list[str]:
    """The keys params.yaml lists (each at null in git): every config key but a dataset's identity."""
    from fian_pipeline.layers import override_keys as config_keys

    return [k for k in config_keys() if k not in DATASET_IDENTITY]


def check_overrides_file(root: str | Path = ".") -> None:
    """params.yaml lists exactly :func:`override_keys` (DVC tracks each there: a missing key is an
    error to DVC), and the keys it sets are valid (unknown key, bad value: an error naming the file)."""
    from fian_pipeline.layers import _leaves, read_layer

    path = Path(root) / OVERRIDES_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: the overrides file is missing (every key at null in git): "
                          f"`git checkout {OVERRIDES_FILE}` or `fian render` writes it")  # fmt: skip
    data = read_layer(path)
    listed = set(_leaves(data, "")) - {""}
    expected = override_keys()
    identity = sorted(k for k in listed if any(k == i or k.startswith(i + ".") for i in DATASET_IDENTITY))
    if identity:
        raise ConfigError(f"{path}: {', '.join(identity)}: a dataset's identity is set in params/datasets/<d>.yaml, "
                          "not for every dataset at once")  # fmt: skip
    unknown = sorted(k for k in listed if not any(k == e or k.startswith(e + ".") for e in expected))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; `fian params explain SECTION` lists the keys")
    missing = sorted(e for e in expected if not any(k == e or k.startswith(e + ".") for k in listed))
    if missing:
        raise ConfigError(f"{path}: key(s) {missing} are missing (DVC tracks each key of this file; null = not "
                          "set): `fian render` writes them when the file sets no key, else add them (empty)")  # fmt: skip
    load_config(extra=[(str(path), read_layer(path, overrides=True))])  # types of the keys it sets

# --------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------

_D = ("dataset",)
_DV = ("dataset", "variant")
_DVS = ("dataset", "variant", "split")
_DS = ("dataset", "split")
_BD: tuple[Layer, ...] = ("base", "dataset")
_BDV: tuple[Layer, ...] = ("base", "dataset", "variant")

RAW_ANN = "data/raw/{dataset}/annotations"
RAW_FEAT = "data/raw/{dataset}/features"
RAW_VIDEOS = "data/raw/{dataset}/videos"
BACKBONE_WEIGHTS = "data/raw/{dataset}/backbone.pt"
ANN = "data/interim/{dataset}/annotations"
STORE = "data/interim/{dataset}/features.h5"
TEXT = "data/interim/{dataset}/text"
PROCESSED = "data/processed/{dataset}"
RUN = "results/{dataset}/{variant}"
# resumable training state (fian.resume): NOT an output, so that neither Snakemake (deletes a failed
# job's outputs) nor DVC (removes outputs before a rerun) deletes it; git- and dvc-ignored
TRAIN_STATE = "state/train/{dataset}/{variant}"
PRIOR = f"results/{{dataset}}/{BASELINE}"
FIGURES = "reports/figures/{dataset}/{variant}"
# a config with `seeds:`: one run per seed, each in its own folder (and state folder, figures)
SEED_DIR = "seed{seed}"
SEED_RUN = f"{RUN}/{SEED_DIR}"
REF_SEED_RUN = f"results/{{dataset}}/{REFERENCE}/{SEED_DIR}"  # the same seed of the reference variant
SHUFFLED = f"{RUN}/{SHUFFLED_DIR}"  # the video-shuffle check (stage shuffle); per seed: {SEED_RUN}/shuffled

_EXTRACT_RESOURCES: dict[str, Any] = {"threads": 8, "mem_mb": 32000, "runtime": 24 * 60, "gpus": 1}  # both extract jobs



def _evaluate_stage(name: str, out: str, doc: str, fixed: tuple[str, ...] = ()) -> Stage:
    """The evaluate stage, or (``fixed``: ``--shuffle-videos``, ``out``: its own folder) the shuffle stage."""
    return Stage(
        name=name,
        module="evaluate",
        phase="model",
        doc=doc,
        wildcards=_DVS,
        layers=_BDV,
        keys=("features", "model", "eval"),
        fixed=fixed,
        args=(
            Arg("--data", PROCESSED),
            Arg("--text", TEXT),
            Arg("--checkpoint", f"{RUN}/checkpoint.pt"),
            Arg("--split", "{split}", "value"),
            Arg("--out", out, "value"),
        ),
        outputs=(
            Out(f"{out}/predictions_{{split}}.jsonl"),
            Out(f"{out}/metrics_{{split}}.json", metric=True, report="metrics", category="Metrics",
                subcategory="{dataset}", labels="metrics"),
            Out(f"{out}/info_{{split}}.json"),
        ),
        when="single",
        threads=4,
        mem_mb=16000,
        runtime=60,
        gpus=1,
    )



def _aggregate_stage(name: str, sub: str, doc: str) -> Stage:
    """The aggregate stage over the runs ``{SEED_RUN}<sub>/`` (``sub``: "" or the shuffle check's folder)."""
    return Stage(
        name=name,
        module="aggregate",
        phase="reports",
        doc=doc,
        wildcards=_DVS,
        layers=(),
        keys=(),
        args=(
            Arg("--metrics", f"{SEED_RUN}{sub}/metrics_{{split}}.json", "seeds"),
            Arg("--info", f"{SEED_RUN}{sub}/info_{{split}}.json", "seeds"),
            Arg("--train-info", f"{SEED_RUN}/train_info.json", "seeds"),
            Arg("--out", f"{RUN}{sub}/summary_{{split}}.json", "out"),
        ),
        outputs=(Out(f"{RUN}{sub}/summary_{{split}}.json"),),
        when="seeds",
    )


STAGES: tuple[Stage, ...] = (
    Stage(
        name="download_annotations",
        module="download",
        phase="data",
        doc="Fetch the annotation files named in params (dataset.annotation_sources), sha256-checked.",
        wildcards=_D,
        layers=_BD,
        keys=("dataset.annotation_sources",),  # only: any other edit must not replan (delete) the raw files
        fixed=("--kind", "annotations"),
        args=(Arg("--out", RAW_ANN, "out"),),
        outputs=(Out(RAW_ANN, "dir"),),
        when="download",
        runtime=60,
        local=True,
    ),
    Stage(
        name="download_features",
        module="download",
        phase="data",
        doc="Fetch the released feature files (dataset.feature_sources).",
        wildcards=_D,
        layers=_BD,
        keys=("dataset.feature_sources",),  # only: any other edit must not replan (delete) the raw files
        fixed=("--kind", "features"),
        args=(Arg("--out", RAW_FEAT, "out"),),
        outputs=(Out(RAW_FEAT, "dir"),),
        when="download_features",  # not for a dataset that uses another's store (dataset.features_from)
        runtime=600,
        local=True,
    ),
    Stage(
        name="download_glove",
        module="download",
        phase="data",
        doc="Fetch and unpack GloVe 840B.300d (text.glove).",
        wildcards=(),
        layers=("base",),
        keys=("text.glove",),
        fixed=("--kind", "glove"),
        args=(Arg("--out", GLOVE_DIR, "value"),),
        outputs=(Out(GLOVE_FILE),),
        when="glove_download",  # a stage without wildcards runs when any dataset uses it
        runtime=240,
        local=True,
    ),
    Stage(
        name="generate",
        module="generate",
        phase="data",
        doc="Write the synthetic dataset (ActivityNet-style JSON + C3D-layout HDF5) from dataset.synthetic.",
        wildcards=_D,
        layers=_BD,
        keys=("dataset",),
        args=(Arg("--annotations-out", RAW_ANN, "out"), Arg("--features-out", RAW_FEAT, "out")),
        outputs=(Out(RAW_ANN, "dir"), Out(RAW_FEAT, "dir")),
        when="generate",
        mem_mb=4000,
    ),
    Stage(
        name="annotations",
        module="annotations",
        phase="data",
        doc="Parse, validate and normalize the annotations: <split>.parquet and counts.json.",
        wildcards=_D,
        layers=_BD,
        keys=("dataset",),
        args=(Arg("--raw", RAW_ANN), Arg("--out", ANN, "out")),
        outputs=(Out(ANN, "dir"),),
        mem_mb=4000,
    ),
    Stage(
        name="features",
        module="features",
        phase="features",
        doc="Import the released feature files into the feature store (videos the annotations use).",
        wildcards=_D,
        layers=_BD,
        keys=("dataset", "features"),
        args=(Arg("--raw", RAW_FEAT), Arg("--annotations", ANN), Arg("--out", STORE, "out")),
        outputs=(Out(STORE),),
        when="import",
        mem_mb=16000,
        runtime=120,
    ),
    Stage(
        name="extract",
        module="extract",
        phase="features",
        doc="Extract C3D/I3D features from raw videos into the feature store (config features: extract).",
        wildcards=_D,
        layers=_BD,
        keys=("dataset", "extract"),
        args=(Arg("--videos", RAW_VIDEOS), Arg("--weights", BACKBONE_WEIGHTS), Arg("--out", STORE, "out")),
        outputs=(Out(STORE),),
        when="extract",
        **_EXTRACT_RESOURCES,
    ),
    Stage(
        name="extract_fallback",
        module="extract",
        phase="features",
        doc="OFFLINE FALLBACK: as extract, with a RANDOM-weight backbone and no backbone.pt (extract.allow_random_weights).",
        wildcards=_D,
        layers=_BD,
        keys=("dataset", "extract", "train.seed"),  # the random weights are seeded by train.seed
        args=(Arg("--videos", RAW_VIDEOS), Arg("--out", STORE, "out")),
        outputs=(Out(STORE),),
        when="extract_fallback",
        **_EXTRACT_RESOURCES,
    ),
    Stage(
        name="text",
        module="text",
        phase="features",
        doc="Vocabulary (train split) and GloVe vectors: vocab.json, embeddings.npy, coverage.json.",
        wildcards=_D,
        layers=_BD,
        keys=("text", "dataset.policy"),
        args=(Arg("--annotations", ANN), Arg("--glove", "{vectors}"), Arg("--out", TEXT, "out")),
        outputs=(Out(TEXT, "dir"),),
        when="glove",
        mem_mb=8000,
        runtime=60,
    ),
    Stage(
        name="text_fallback",
        module="text",
        phase="features",
        doc="OFFLINE FALLBACK: as text, with GloVe vectors trained on the dataset's own sentences.",
        wildcards=_D,
        layers=_BD,
        keys=("text", "dataset.policy"),
        args=(Arg("--annotations", ANN), Arg("--out", TEXT, "out")),
        outputs=(Out(TEXT, "dir"),),
        when="fallback",
        runtime=60,
    ),
    Stage(
        name="prepare",
        module="prepare",
        phase="features",
        doc="Downsample every video to features.num_steps and encode the queries: <split>.h5.",
        wildcards=_D,
        layers=_BD,
        keys=("features", "text.max_query_len", "text.lowercase", "dataset.policy"),
        args=(
            Arg("--annotations", ANN),
            Arg("--features", "{store}"),  # its own STORE, or that of dataset.features_from
            Arg("--text", TEXT),
            Arg("--out", PROCESSED, "out"),
        ),
        outputs=(Out(PROCESSED, "dir"),),
        mem_mb=16000,
        runtime=60,
    ),
    Stage(
        name="train",
        module="train",
        phase="model",
        doc="Train FIAN (one variant): checkpoint.pt, history.csv, train_metrics.json (+ train_info.json); logged to MLflow.",
        wildcards=_DV,
        layers=_BDV,
        keys=("features", "model", "loss", "train", "eval"),  # tracking.* only observes
        args=(Arg("--data", PROCESSED), Arg("--text", TEXT), Arg("--out", RUN, "value"), Arg("--state", TRAIN_STATE, "value")),
        outputs=(
            Out(f"{RUN}/checkpoint.pt"),
            Out(f"{RUN}/history.csv", plot=True, plot_xy=("epoch", "loss"), plot_ys=("val/R@1,IoU=0.5",)),
            Out(f"{RUN}/train_metrics.json", metric=True, report="train_metrics", category="Training",
                subcategory="{dataset}", labels="train"),
            Out(f"{RUN}/train_info.json"),
        ),
        when="single",
        threads=4,
        mem_mb=32000,
        runtime=12 * 60,
        gpus=1,
        distributed=True,
        console=True,
    ),
    _evaluate_stage(
        "evaluate", RUN,
        "Evaluate a checkpoint on a split: predictions_<split>.jsonl, metrics_<split>.json (R@n,IoU=m under eval.iou_rule, mIoU).",
    ),
    _evaluate_stage(
        "shuffle", SHUFFLED,
        f"The video-shuffle check (Table 7): the {REFERENCE} checkpoint evaluated with every query shown another "
        "video of the split (a derangement seeded by eval.shuffle_seed); logged to MLflow.",
        fixed=("--shuffle-videos",),
    ),
    Stage(
        name="baseline",
        module="baseline",
        phase="model",
        doc="The moment-prior baseline (query-independent) on a split, with the same metrics.",
        wildcards=_DS,
        layers=_BD,
        keys=("features", "eval"),
        args=(Arg("--data", PROCESSED), Arg("--split", "{split}", "value"), Arg("--out", PRIOR, "value")),
        outputs=(
            Out(f"{PRIOR}/predictions_{{split}}.jsonl"),
            Out(f"{PRIOR}/metrics_{{split}}.json", metric=True, report="metrics", category="Metrics",
                subcategory="{dataset}", labels="metrics"),
            Out(f"{PRIOR}/info_{{split}}.json"),
        ),
        mem_mb=8000,
    ),
    Stage(
        name="plots",
        module="plots",
        phase="reports",
        doc="Figure-6-like timelines (ground truth vs top-1), training curves, attention maps; logged to MLflow.",
        wildcards=_DVS,
        layers=_BDV,
        keys=(),  # tracking.* only: MLflow observes
        args=(
            Arg("--predictions", f"{RUN}/predictions_{{split}}.jsonl"),
            Arg("--history", f"{RUN}/history.csv"),
            Arg("--checkpoint", f"{RUN}/checkpoint.pt"),
            Arg("--data", PROCESSED),
            Arg("--text", TEXT),
            Arg("--split", "{split}", "value"),
            Arg("--out", FIGURES, "value"),
        ),
        outputs=(
            Out(f"{FIGURES}/timeline_{{split}}.png", report="timeline", category="Figures", subcategory="{dataset}",
                labels=(("figure", "timeline"), ("run", "{variant}"), ("split", "{split}"))),
            Out(f"{FIGURES}/training_curves_{{split}}.png", report="training_curves", category="Figures",
                subcategory="{dataset}", labels=(("figure", "training curves"), ("run", "{variant}"), ("split", "{split}"))),
            Out(f"{FIGURES}/attention_{{split}}.png", report="attention", category="Figures", subcategory="{dataset}",
                labels=(("figure", "attention maps"), ("run", "{variant}"), ("split", "{split}"))),
        ),
        mem_mb=4000,
        when="single",
    ),
    _aggregate_stage(
        "aggregate", "",
        "Gather the seeds of one variant: summary_<split>.json (mean, sample std, min, max, n, every seed's value).",
    ),
    _aggregate_stage(
        "aggregate_shuffle", f"/{SHUFFLED_DIR}",
        "Gather the seeds of the video-shuffle check: shuffled/summary_<split>.json (as aggregate).",
    ),
    Stage(
        name="compare",
        module="compare",
        phase="reports",
        doc=f"A variant vs {REFERENCE} on the same queries: mean R@1 differences, paired bootstrap intervals (seeds pooled).",
        wildcards=_DVS,
        layers=(),
        keys=(),
        # the analysis settings (ours, docs/PIPELINE.md "Seeds and intervals"): not model hyperparameters
        fixed=("--metrics", "R@1,IoU=0.5", "R@1,IoU=0.7", "--resamples", "2000", "--level", "0.95",
               "--bootstrap-seed", "0"),  # fmt: skip
        args=(
            Arg("--predictions", f"{SEED_RUN}/predictions_{{split}}.jsonl", "seeds"),
            Arg("--info", f"{SEED_RUN}/info_{{split}}.json", "seeds"),
            Arg("--reference", f"{REF_SEED_RUN}/predictions_{{split}}.jsonl", "seeds"),
            Arg("--reference-info", f"{REF_SEED_RUN}/info_{{split}}.json", "seeds"),
            Arg("--out", f"{RUN}/compare_{REFERENCE}_{{split}}.json", "out"),
        ),
        outputs=(Out(f"{RUN}/compare_{REFERENCE}_{{split}}.json"),),
        when="seeds",
    ),
    Stage(
        name="tables",
        module="tables",
        phase="reports",
        doc="Tables 1-6 (LaTeX, Markdown, per-seed CSV, provenance): the paper's numbers (kept as data) beside ours; "
        "Table 7: FIAN beside the moment prior, blind FIAN and the video-shuffle check, every dataset of the config.",
        wildcards=(),
        layers=(),
        keys=(),
        args=(Arg("--results", "results", "value"), Arg("--out", "reports", "value")),
        # in `snakemake --report`: Tables 1-6 captioned by workflow/report/tables.rst, Table 7 by bias.rst
        outputs=tuple(Out(f"{t.removesuffix('.tex')}{ext}", **({"report": "bias" if k == 7 else "tables",
                                                             "category": "Tables", "labels": (("table", f"Table {k}"),)}
                                                            if ext == ".tex" else {}))
                      for k, t in enumerate(TABLES, 1) for ext in (".tex", ".md", ".csv", ".provenance.json")),  # fmt: skip
    ),
)


def per_seed(s: Stage) -> Stage:
    """The stage ``s`` for one seed of a config with ``seeds:`` (name ``<name>_seed``): a ``seed``
    wildcard, its run in ``results/<d>/<v>/seed<N>/`` (state and figures in ``.../seed<N>``), and
    train given the seed on its command line (``--seed N``, over params' ``train.seed``; evaluate
    checks that its checkpoint was trained with it)."""

    def move(path: str) -> str:
        for folder in (RUN, TRAIN_STATE, FIGURES):
            if path.startswith(folder) and not path.startswith(f"{folder}/{SEED_DIR}"):
                return f"{folder}/{SEED_DIR}{path[len(folder):]}"
        return path

    args = tuple(dataclasses.replace(a, path=move(a.path)) for a in s.args)
    if s.module in ("train", "evaluate"):  # train: train.seed; evaluate: checks the checkpoint's
        args += (Arg("--seed", "{seed}", "value"),)
    wildcards = tuple(w for w in WILDCARDS if w in s.wildcards or w == "seed")
    outputs = tuple(dataclasses.replace(o, path=move(o.path), labels=o.labels + (("seed", "{seed}"),))
                    if o.report and isinstance(o.labels, tuple) else dataclasses.replace(o, path=move(o.path))
                    for o in s.outputs)  # fmt: skip
    doc = s.doc.rstrip(".") + ", one seed (config `seeds:`)."
    return dataclasses.replace(s, name=f"{s.name}_seed", doc=doc, wildcards=wildcards, args=args, outputs=outputs,
                               when="seeds")  # fmt: skip


# each one-run stage followed by its per-seed twin: ... train, train_seed, evaluate, evaluate_seed,
# baseline, plots, plots_seed, aggregate, compare, tables
STAGES = tuple(x for s in STAGES for x in ((s, per_seed(s)) if s.when == "single" else (s,)))

STAGE_BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
# the stages of the video-shuffle check: for the reference variant of a dataset with `shuffle: true`
SHUFFLE_STAGES = frozenset({"shuffle", "shuffle_seed", "aggregate_shuffle"})
PHASES: tuple[Phase, ...] = ("data", "features", "model", "reports")


def stage(name: str) -> Stage:
    try:
        return STAGE_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {sorted(STAGE_BY_NAME)}") from None


# --------------------------------------------------------------------------------------------
# The plan: which datasets, variants and alternatives a config asks for
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetPlan:
    name: str
    variants: tuple[str, ...]
    source: Literal["download", "generate", "local"] = "download"  # local: raw files in place, never fetched
    features: Literal["import", "extract"] = "import"
    baseline: bool = True
    plots: bool = True
    glove: bool = True  # False when params ask for the offline fallback (text.fallback_train_glove)
    random_backbone: bool = False  # features: extract with extract.allow_random_weights (no backbone.pt)
    vectors: str | None = None  # the dataset's own word-vector file (text.vectors_file); None: GLOVE_FILE
    seeds: tuple[int, ...] | None = None  # the config's `seeds:` (None: one run per variant, params' train.seed)
    # the splits evaluated and reported: params dataset.eval_splits, else the config's eval_split
    eval_splits: tuple[str, ...] = ("test",)
    # the dataset whose feature store this one reads (params dataset.features_from): no store of its own
    features_from: str | None = None
    shuffle: bool = False  # the video-shuffle check of the reference variant (stage shuffle; Table 7)

    @property
    def store(self) -> str:
        """The feature store this dataset's prepare job reads."""
        return fill(STORE, {"dataset": self.features_from or self.name})

    def uses(self, when: When) -> bool:
        own = self.features_from is None  # a store of its own: download, import or extract its features
        return {
            "always": True,
            "download": self.source == "download",
            "download_features": self.source == "download" and own,
            "generate": self.source == "generate",
            "import": self.features == "import" and own,
            "extract": self.features == "extract" and not self.random_backbone and own,
            "extract_fallback": self.features == "extract" and self.random_backbone and own,
            "glove": self.glove,
            "glove_download": self.glove and self.vectors is None,
            "fallback": not self.glove,
            "single": self.seeds is None,
            "seeds": self.seeds is not None,
        }[when]


@dataclass(frozen=True)
class Plan:
    """What a config (workflow/config/*.yaml, validated by workflow/schemas/config.schema.json) runs."""

    datasets: tuple[DatasetPlan, ...]
    eval_split: str = "test"
    gpus: int = 0  # GPUs per training job (0: none requested; N > 1: DDP via torchrun); SLURM `gpu` resource
    tables_from: str | None = None  # take the "ours" rows of every table from this dataset (demo)
    # per table dataset, the dataset of its "ours" rows (the rehearsal: (("tacos", "tacos_mini"), ...))
    tables_map: tuple[tuple[str, str], ...] = ()
    params_dir: str = "params"
    # `seeds:` of the config: one train/evaluate job per (dataset, variant, seed), aggregated and
    # compared; None (no key): one job per (dataset, variant) with params' train.seed, as before
    seeds: tuple[int, ...] | None = None

    def dataset(self, name: str) -> DatasetPlan:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(
            f"dataset {name!r} is not in the config; configured: {[d.name for d in self.datasets]}"
        )


# Keys every params/datasets/<name>.yaml must set itself: left out, they would silently take
# base.yaml's values, which are TACoS-like (S4.3), not the new dataset's (README "Bring your own dataset")
REQUIRED_DATASET_KEYS: tuple[tuple[str, str], ...] = (
    ("dataset.name", "the dataset key used in every path (= the file's name)"),
    ("dataset.format", "annotation parser: activitynet, tacos or charades"),
    ("dataset.splits", "split -> annotation file names"),
    ("dataset.feature_layout", "feature file layout"),
    ("dataset.feature_dim", "width of a feature vector"),
    ("features.num_steps", "T, steps per video after downsampling (S4.3)"),
    ("model.window_sizes", "candidate window sizes in steps (S4.3)"),
    ("model.stride_ratio", "window stride / window size (S4.3)"),
    ("loss.alpha", "boundary-loss weight (S4.3)"),
    ("train.lr", "Adam learning rate (S4.3)"),
    ("train.batch_size", "batch size (S4.3)"),
)


def check_dataset_file(path: str | Path, name: str) -> None:
    """A dataset params file sets every REQUIRED_DATASET_KEYS key, and dataset.name is its name."""
    from fian_pipeline.layers import read_layer

    data = read_layer(path)
    missing = []
    for key, meaning in REQUIRED_DATASET_KEYS:
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            missing.append(f"{key} ({meaning})")
    if missing:
        raise ConfigError(
            f"{path}: a dataset params file must set these keys itself (base.yaml's values are "
            f"TACoS-like defaults): {'; '.join(missing)}"
        )
    if data["dataset"]["name"] != name:
        raise ConfigError(f"{path}: dataset.name is {data['dataset']['name']!r}, but the file is {name!r}")


def check_config_files(paths: Sequence[str | Path]) -> None:
    """The workflow config files Snakemake read (``workflow.configfiles``), read again strictly
    (:func:`fian.config.load_yaml`): Snakemake's own reader keeps the last of a key given twice."""
    for p in paths:
        load_yaml(p, ConfigError, "workflow config")


def check_seeds(config: Mapping[str, Any], source: str = "workflow config") -> tuple[int, ...] | None:
    """The config's ``seeds:`` as a tuple (None when the key is absent); a clear error naming
    ``source`` (the config file) and the key for an empty list, a repeated seed or a non-integer.

    The Snakefile calls it before the schema check (whose messages name neither), ``fian render``
    before its own schema check; both before any job runs."""
    seeds = config.get("seeds") if isinstance(config, Mapping) else None
    if seeds is None:  # absent (or null)
        return None
    where = f"{source}: seeds"
    if not isinstance(seeds, list | tuple):
        raise ConfigError(f"{where}: expected a list of integer seeds, e.g. [0, 1, 2], got {seeds!r}")
    if not seeds:
        raise ConfigError(f"{where}: the list is empty; give at least one seed (or leave the key out: one run, params' train.seed)")
    for i, v in enumerate(seeds):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where}[{i}]: {v!r} is not an integer")
        if v < 0:
            raise ConfigError(f"{where}[{i}]: {v} is negative (seeds are >= 0)")
    repeated = sorted({v for v in seeds if seeds.count(v) > 1})
    if repeated:
        raise ConfigError(f"{where}: seed(s) {repeated} repeated; each seed is one run")
    return tuple(int(v) for v in seeds)


def check_splits(cfg: Any, dfile: Path, eval_split: str, source: str) -> tuple[str, ...]:
    """The splits a dataset evaluates (params dataset.eval_splits, else the config's ``eval_split``),
    each a split of dataset.splits; for a downloaded dataset every file of dataset.splits is one of
    dataset.annotation_sources (a test split whose file nobody fetches fails here, naming the file,
    not hours later).  Errors name the params file."""
    ds = cfg.dataset
    splits = tuple(ds.eval_splits) or (eval_split,)
    for s in splits:
        if not NAME_RE.match(s):
            raise ConfigError(f"{dfile}: dataset.eval_splits: bad split name {s!r} (must match {NAME_RE.pattern})")
        if ds.splits and s not in ds.splits:
            what = "dataset.eval_splits" if ds.eval_splits else "the workflow config's eval_split (no dataset.eval_splits)"
            raise ConfigError(f"{dfile}: {what} names split {s!r}, which is not in dataset.splits {sorted(ds.splits)}")
    if source == "download" and ds.annotation_sources:
        fetched = {src.name for src in ds.annotation_sources}
        for split, files in ds.splits.items():
            for f in files:
                if f not in fetched:
                    raise ConfigError(f"{dfile}: dataset.splits.{split}: annotation file {f!r} is not among "
                                      f"dataset.annotation_sources {sorted(fetched)}: nothing would download it")
    return splits


def check_features_from(plans: Sequence[DatasetPlan], configs: Mapping[str, tuple[Path, Any]], source: str) -> None:
    """A dataset that reads another's feature store (params dataset.features_from): that dataset is in
    the config, has a store of its own, and the same feature layout and width.  Called when the
    config is resolved, before any job runs."""
    names = {p.name for p in plans}
    for p in plans:
        if p.features_from is None:
            continue
        dfile, cfg = configs[p.name]
        src = p.features_from
        if src == p.name:
            raise ConfigError(f"{dfile}: dataset.features_from names the dataset itself ({src!r})")
        if src not in names:
            raise ConfigError(f"{source}: dataset {p.name!r} reads the feature store of {src!r} ({dfile}: "
                              f"dataset.features_from: {src}), but {src!r} is not among the config's datasets "
                              f"{sorted(names)}: add it under datasets (its store is built by its own jobs)")
        sfile, scfg = configs[src]
        if scfg.dataset.features_from is not None:
            raise ConfigError(f"{dfile}: dataset.features_from: {src!r} itself reads the store of "
                              f"{scfg.dataset.features_from!r} ({sfile}); name that dataset instead")
        for key in ("feature_layout", "feature_dim"):
            mine, theirs = getattr(cfg.dataset, key), getattr(scfg.dataset, key)
            if mine != theirs:
                raise ConfigError(f"{dfile}: dataset.{key} is {mine!r} but the store it reads ({src}, {sfile}) "
                                  f"has {theirs!r}")


def plan_from_config(config: Mapping[str, Any], root: str | Path = ".", source: str = "workflow config") -> Plan:
    """Resolve a (schema-validated) config; load every params layer it uses (clear errors).
    ``source``: how errors name the config (its file)."""
    root = Path(root)
    seeds = check_seeds(config, source)
    params_dir = str(config.get("params_dir", "params"))
    if "datasets" not in config or not config["datasets"]:
        raise ConfigError("workflow config: 'datasets' must name at least one dataset")
    check_overrides_file(root)
    from fian_pipeline.layers import read_layer

    over = [(OVERRIDES_FILE, read_layer(root / OVERRIDES_FILE, overrides=True))]
    plans = []
    configs: dict[str, tuple[Path, Any]] = {}  # dataset -> (params file, its config)
    for name, spec in config["datasets"].items():
        spec = spec or {}
        if not NAME_RE.match(str(name)):
            raise ConfigError(f"workflow config: dataset name {name!r} must match {NAME_RE.pattern}")
        variants = tuple(spec.get("variants", ("fian",)))
        for v in variants:
            if not NAME_RE.match(v) or v == BASELINE:
                raise ConfigError(f"workflow config: datasets.{name}.variants: bad variant name {v!r}")
        shuffle = bool(spec.get("shuffle", False))
        if shuffle and REFERENCE not in variants:
            raise ConfigError(f"workflow config: datasets.{name}.shuffle: the video-shuffle check evaluates "
                              f"the {REFERENCE!r} variant, which datasets.{name}.variants does not list")
        base = root / params_dir / "base.yaml"
        dfile = root / params_dir / "datasets" / f"{name}.yaml"
        if not dfile.exists():
            raise ConfigError(f"workflow config: datasets.{name}: no params file {dfile}")
        check_dataset_file(dfile, str(name))  # first: a missing key would surface as a base.yaml value
        cfg = load_config(base, dfile, extra=over)  # raises ConfigError naming file and key
        eval_splits = check_splits(cfg, dfile, str(config.get("eval_split", "test")), spec.get("source", "download"))
        configs[str(name)] = (dfile, cfg)
        if cfg.dataset.features_from and spec.get("features", "import") != "import":  # the schema fills "import" in
            raise ConfigError(f"{source}: datasets.{name}.features: {name!r} has no store of its own (it reads "
                              f"{cfg.dataset.features_from!r}'s, {dfile}: dataset.features_from): set features on "
                              f"datasets.{cfg.dataset.features_from} instead")
        for v in variants:
            vfile = root / params_dir / "variants" / f"{v}.yaml"
            if not vfile.exists():
                raise ConfigError(f"workflow config: datasets.{name}.variants: no params file {vfile}")
            load_config(base, dfile, vfile, extra=over)
        plans.append(
            DatasetPlan(
                name=str(name),
                variants=variants,
                source=spec.get("source", "download"),
                features=spec.get("features", "import"),
                baseline=bool(spec.get("baseline", True)),
                plots=bool(spec.get("plots", True)),
                shuffle=shuffle,
                glove=not cfg.text.fallback_train_glove,
                random_backbone=cfg.extract.allow_random_weights,
                vectors=cfg.text.vectors_file,
                seeds=seeds,
                eval_splits=eval_splits,
                features_from=cfg.dataset.features_from,
            )
        )
    check_features_from(plans, configs, source)
    tables_from = config.get("tables_from")
    tables_map: tuple[tuple[str, str], ...] = ()
    if isinstance(tables_from, Mapping):  # {table dataset: configured dataset} (the rehearsal)
        from fian.reports.paper_results import load_paper_results

        known = sorted({spec.dataset for spec in load_paper_results().values()})
        for table_ds, ours in tables_from.items():
            if table_ds not in known:
                raise ConfigError(
                    f"workflow config: tables_from.{table_ds}: no table reports {table_ds!r}; tables report {known}"
                )
            if ours not in {p.name for p in plans}:
                raise ConfigError(
                    f"workflow config: tables_from.{table_ds}={ours!r} is not one of the configured datasets"
                )
        tables_map = tuple(sorted((str(k), str(v)) for k, v in tables_from.items()))
        tables_from = None
    elif tables_from is not None and tables_from not in {p.name for p in plans}:
        raise ConfigError(
            f"workflow config: tables_from={tables_from!r} is not one of the configured datasets"
        )
    return Plan(
        datasets=tuple(plans),
        eval_split=str(config.get("eval_split", "test")),
        gpus=int(config.get("gpus", 0)),  # true -> 1, false -> 0
        tables_from=tables_from,
        tables_map=tables_map,
        params_dir=params_dir,
        seeds=seeds,
    )


# --------------------------------------------------------------------------------------------
# Stage instances: what actually runs for a plan (both renderings must agree with this)
# --------------------------------------------------------------------------------------------


def fill(template: str, wildcards: Mapping[str, str]) -> str:
    out = template
    for k, v in wildcards.items():
        out = out.replace("{" + k + "}", v)
    return out


@dataclass(frozen=True)
class Instance:
    """One concrete job: a stage with its wildcards filled in."""

    stage: Stage
    wildcards: dict[str, str]

    @property
    def key(self) -> str:
        """DVC's foreach key (``train@<key>``), "" for stages without wildcards."""
        return "-".join(self.wildcards[w] for w in self.stage.wildcards)

    @property
    def id(self) -> str:
        return f"{self.stage.name}@{self.key}" if self.key else self.stage.name

    def command(self, plan: Plan | None = None) -> str:
        seeds = plan.seeds if plan is not None else None
        cmd = fill(self.stage.command(launcher(self.stage, plan) if plan else "python -m", seeds), self.wildcards)
        if plan is not None:
            cmd = " ".join([cmd, *plan_args(self.stage, plan)])
        return cmd

    def params_files(self) -> list[str]:
        """The --params layers of this job (files; rerun decisions go by :meth:`tracked_params`)."""
        return [fill(p, self.wildcards) for p in self.stage.params_files()]

    def tracked_params(self, root: str | Path = ".") -> dict[str, dict[str, Any]]:
        """{layer file: {dotted key: value}}: the keys the stage reads, each under the layer of the
        three that wins for it (fian_pipeline.layers); what DVC tracks beside :meth:`override_keys`."""
        from fian_pipeline.layers import winners

        return winners(self.params_files(), self.stage.keys, root)

    def override_keys(self) -> list[str]:
        """The keys of params.yaml the stage reads: DVC tracks them there, whatever their value."""
        if not self.stage.layers:
            return []
        return [k for k in override_keys() if any(k == p or k.startswith(p + ".") or p.startswith(k + ".")
                                                  for p in self.stage.keys)]  # fmt: skip

    def deps(self, plan: Plan) -> list[str]:
        files = self.params_files()
        files += [fill(p, self.wildcards) for p in self.stage.inputs(plan.seeds or ())]
        files += plan_inputs(self.stage, plan)
        return files

    def outs(self) -> list[str]:
        return [fill(o.path, self.wildcards) for o in self.stage.outputs]


def param_values(name: str, wildcards: Mapping[str, str], root: str | Path = ".") -> str:
    """A rule's ``params: values=``: the merged values of the keys the stage reads (canonical JSON).

    Snakemake's params trigger reruns a job exactly when this string changes (a value it reads
    changed in some layer, or a key it reads was added or removed); the layer files are not inputs,
    so their modification times decide nothing.  dvc.yaml tracks the same keys (render.py).
    """
    from fian_pipeline.layers import values_json

    s = stage(name)
    wc = {w: str(wildcards[w]) for w in s.wildcards}
    return values_json([fill(p, wc) for p in s.params_files()], s.keys, root, overrides=OVERRIDES_FILE)


def manual_fetches(plan: Plan, root: str | Path = ".") -> list[str]:
    """One notice per file a dataset of the plan must get by hand (a ``by_hand`` source: a share
    page) that is not in place yet: the file name, the page, and where to put it.  The Snakefile
    prints them when it is parsed, dry runs included, before any job runs."""
    root = Path(root)
    notes = []
    for d in plan.datasets:
        if d.source != "download":
            continue
        cfg = load_config(root / plan.params_dir / "base.yaml", root / plan.params_dir / "datasets" / f"{d.name}.yaml")
        kinds = [("annotations", RAW_ANN, cfg.dataset.annotation_sources)]
        if d.uses("import"):
            kinds.append(("features", RAW_FEAT, cfg.dataset.feature_sources))
        for kind, folder, sources in kinds:
            for src in sources:
                dest = Path(fill(folder, {"dataset": d.name})) / src.name
                if src.by_hand and not (root / dest).exists():
                    notes.append(
                        f"{d.name}: {src.name} must be fetched BY HAND (a share page, no direct download): "
                        f"open {src.url} in a browser, download {src.name} and put it at {dest}; then "
                        f"`snakemake --touch {fill(folder, {'dataset': d.name})}` (with the same --configfile). "
                        f"Until then the download_{kind} job stops with these instructions."
                    )
    return notes


def plan_args(stage_: Stage, plan: Plan) -> list[str]:
    """Arguments that depend on the whole plan rather than on wildcards."""
    if stage_.name != "tables":
        return []
    args = ["--split", plan.eval_split]
    if plan.tables_from:
        args += ["--ours-from", plan.tables_from]
    for table_ds, ours in plan.tables_map:
        args += ["--ours-from", f"{table_ds}={ours}"]
    if plan.seeds is not None:  # read each variant's summary (stage aggregate) and comparison (compare)
        args += ["--seeds", *(str(s) for s in plan.seeds)]
    items = []  # Table 7: every dataset of the config; one with test splits of its own (Charades-CD) once per split
    for d in plan.datasets:
        items += [d.name] if d.eval_splits == (plan.eval_split,) else [f"{d.name}:{s}" for s in d.eval_splits]
    args += ["--datasets", *items]
    stand_in = [d.name for d in plan.datasets if d.source == "generate"]
    if stand_in:
        args += ["--stand-in", *stand_in]
    return args


def plan_inputs(stage_: Stage, plan: Plan) -> list[str]:
    """Dependencies that depend on the whole plan: the tables read every run's metrics and info
    files (one run per variant), or (``seeds:``) every variant's summary and comparison with the
    reference, the baseline's metrics and (Table 7) the video-shuffle check's."""
    if stage_.name != "tables":
        return []
    files = []
    for d in plan.datasets:
        for split in d.eval_splits:  # the config's eval_split, or the dataset's own (test_iid, test_ood)
            for v in d.variants:
                run = f"results/{d.name}/{v}"
                if plan.seeds is None:
                    files += [f"{run}/metrics_{split}.json", f"{run}/info_{split}.json", f"{run}/train_info.json"]
                else:
                    files.append(f"{run}/summary_{split}.json")
            if d.baseline:
                files += [f"results/{d.name}/{BASELINE}/metrics_{split}.json",
                          f"results/{d.name}/{BASELINE}/info_{split}.json"]
            if d.shuffle:  # Table 7: the video-shuffle check of the reference variant
                shuffled = f"results/{d.name}/{REFERENCE}/{SHUFFLED_DIR}"
                files += ([f"{shuffled}/metrics_{split}.json", f"{shuffled}/info_{split}.json"] if plan.seeds is None
                          else [f"{shuffled}/summary_{split}.json"])  # fmt: skip
    files += [o for inst in instances(plan) if inst.stage.name == "compare" for o in inst.outs()]
    return files


def instances(plan: Plan, stages: Sequence[Stage] = STAGES) -> list[Instance]:
    """Every job the plan needs, in stage order."""
    out: list[Instance] = []
    for s in stages:
        if not s.wildcards:
            if s.when == "always" or any(d.uses(s.when) for d in plan.datasets):
                out.append(Instance(s, {}))
            continue
        for d in plan.datasets:
            if not d.uses(s.when):
                continue
            if s.name == "baseline" and not d.baseline:
                continue
            if s.module == "plots" and not d.plots:
                continue
            variants = d.variants if "variant" in s.wildcards else (None,)
            if s.name == "compare":  # every other variant of a dataset that runs the reference
                variants = tuple(v for v in d.variants if v != REFERENCE) if REFERENCE in d.variants else ()
            if s.name in SHUFFLE_STAGES:  # the reference variant only, when the config asks
                variants = (REFERENCE,) if d.shuffle else ()
            for v in variants:
                for seed in d.seeds if "seed" in s.wildcards and d.seeds else (None,):
                    for split in d.eval_splits if "split" in s.wildcards else (None,):
                        wc = {"dataset": d.name}
                        if v is not None:
                            wc["variant"] = v
                        if seed is not None:
                            wc["seed"] = str(seed)
                        if split is not None:
                            wc["split"] = split
                        wc.update(plan_vars(s, d))
                        out.append(Instance(s, wc))
    return out


def plan_vars(stage_: Stage, d: DatasetPlan) -> dict[str, str]:
    """The PLAN_VARS a stage's paths use, for dataset ``d``."""
    values = {"vectors": d.vectors or GLOVE_FILE, "store": d.store}
    used = {v for v in PLAN_VARS for a in stage_.args if "{" + v + "}" in a.path}
    return {v: values[v] for v in sorted(used)}


def seed_inputs(plan: Plan, stage_name: str, flag: str, wildcards: Mapping[str, str]) -> list[str]:
    """The paths of a ``seeds`` argument of a job, one per seed of the plan (Snakemake input functions)."""
    (a,) = [a for a in stage(stage_name).args if a.flag == flag]
    wc = {k: str(v) for k, v in dict(wildcards).items()}
    return [fill(p, wc) for p in arg_paths(a, plan.seeds or ())]


def plan_var(plan: Plan, name: str, wildcards: Mapping[str, str]) -> str:
    """A PLAN_VAR of a job (Snakemake input functions and params)."""
    d = plan.dataset(str(wildcards["dataset"]))
    return {"vectors": d.vectors or GLOVE_FILE, "store": d.store}[name]


def dataset_targets(plan: Plan, name: str) -> list[str]:
    """The final files of one dataset (its metrics, figures, checkpoints): Snakemake's target
    ``dataset_<name>``; unlike ``all`` it leaves the tables (reports/table*.tex) alone."""
    plan.dataset(name)
    files: list[str] = []
    for inst in instances(plan):
        if inst.stage.module in FINAL and inst.stage.module != "tables" and inst.wildcards.get("dataset") == name:
            files.extend(inst.outs())
    return files


def missing_local(plan: Plan, root: str | Path = ".") -> list[str]:
    """For ``source: local`` datasets, the raw folders (and word-vector files) not in place."""
    root = Path(root)
    notes = []
    for d in plan.datasets:
        if d.source != "local":
            continue
        folders = [RAW_ANN] + ([] if d.features_from else [RAW_FEAT] if d.features == "import" else [RAW_VIDEOS])
        folders += [BACKBONE_WEIGHTS] if d.uses("extract") else []
        for f in folders:
            path = fill(f, {"dataset": d.name})
            if not (root / path).exists():
                notes.append(f"{d.name} (source: local): {path} is missing: put the dataset's files there")
        if d.vectors and not (root / d.vectors).is_file():
            notes.append(f"{d.name}: text.vectors_file {d.vectors} is not a file")
    return notes


def targets(plan: Plan) -> list[str]:
    """The final files of a plan: tables, figures, every metrics file (Snakemake's `all`)."""
    files: list[str] = []
    for inst in instances(plan):
        if inst.stage.module in FINAL:
            files.extend(inst.outs())
    return files


# the modules whose outputs a run ends with (Snakemake's targets)
FINAL = ("tables", "plots", "evaluate", "baseline", "train", "aggregate", "compare")  # shuffle: module evaluate


def dataset_regex(plan: Plan, when: When) -> str:
    """A wildcard constraint matching exactly the datasets whose plan uses a stage alternative."""
    names = [re.escape(d.name) for d in plan.datasets if d.uses(when)]
    return "|".join(names) if names else "(?!x)x"


def variant_regex(plan: Plan) -> str:
    names = sorted({re.escape(v) for d in plan.datasets for v in d.variants})
    return "|".join(names) if names else "(?!x)x"


def resources(stage_: Stage, plan: Plan) -> dict[str, int]:
    res = {"mem_mb": stage_.mem_mb, "runtime": stage_.runtime}
    if stage_.gpus and plan.gpus:
        res["gpu"] = plan.gpus if stage_.distributed else stage_.gpus
    return res


def report_labels(kind: str):  # noqa: ANN201 - a Snakemake labels function
    """The columns `snakemake --report` shows for a result of ``kind`` (registry ``Out.labels``): a
    function of the job's wildcards and output files, called when the report is made, so that the
    report's tables show the numbers (metrics files hold fractions; shown as percentages)."""
    import json

    def pct(m: Mapping[str, Any], key: str) -> str:
        v = m.get(key)
        return f"{100 * v:.2f}" if isinstance(v, int | float) else "-"

    def labels(wildcards: Any, output: Any) -> dict[str, str]:
        files = [str(f) for f in output]
        run = str(getattr(wildcards, "variant", "") or BASELINE)
        path = next(f for f in files if Path(f).name.startswith(("metrics_", "train_metrics")))
        if Path(path).parent.name == SHUFFLED_DIR:  # stage shuffle (Table 7)
            run += " (videos shuffled)"
        m = json.loads(Path(path).read_text())
        if kind == "train":
            return {"run": run, "best epoch": str(m.get("best_epoch", "-")),
                    "val R@1,IoU=0.5 (%)": pct(m, "val/R@1,IoU=0.5"), "val mIoU (%)": pct(m, "val/mIoU")}  # fmt: skip
        info = Path(path).with_name(Path(path).name.replace("metrics_", "info_"))
        protocol = json.loads(info.read_text()).get("protocol", {}) if info.exists() else {}
        return {"run": run if run != BASELINE else f"{BASELINE} (baseline)", "split": str(wildcards.split),
                **{f"{k} (%)": pct(m, k) for k in ("R@1,IoU=0.5", "R@1,IoU=0.7", "R@5,IoU=0.5", "R@5,IoU=0.7", "mIoU")},
                "hit": str(protocol.get("hit", "-"))}  # fmt: skip

    return labels


def launcher(stage_: Stage, plan: Plan) -> str:
    """How a stage's module is started: one process, or one DDP process per GPU through torchrun.

    The training stage reads torchrun's environment (fian.distributed) and shards each global
    batch over the processes; SLURM gives the job ``--gpus=N`` from the ``gpu`` resource.
    """
    if stage_.distributed and plan.gpus > 1:
        return f"torchrun --standalone --nproc_per_node {plan.gpus} -m"
    return "python -m"
