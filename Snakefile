# FIAN pipeline.  The rules live in workflow/rules/*.smk, rendered from pipeline/registry.py
# (`fian render`); this file loads and validates the config, resolves the plan and includes them.
#
#   snakemake --profile workflow/profiles/local                      # the demo (synthetic)
#   snakemake --profile workflow/profiles/local --configfile workflow/config/paper.yaml
#   snakemake --profile workflow/profiles/slurm --configfile workflow/config/paper.yaml

import sys

from snakemake.utils import min_version, validate

from fian_pipeline import registry as R

min_version("9.0")


# `snakemake --report report.html`: this description, then the tables, figures and metrics that the
# rules mark with report() (captions in workflow/report/*.rst; rendered from pipeline/registry.py)
report: "workflow/report/workflow.rst"

# one id per workflow invocation (jobs inherit it, SLURM jobs too): their MLflow runs become the
# children of one parent run per experiment (fian.tracking, docs/TRAINING.md "MLflow")
import datetime as _dt, os as _os, uuid as _uuid

_os.environ.setdefault("FIAN_WORKFLOW_RUN", f"{_dt.datetime.now(_dt.UTC):%Y%m%dT%H%M%SZ}-{_uuid.uuid4().hex[:8]}")


# the demo config unless --configfile/--config give one (Snakemake would MERGE a second config
# file into the first: datasets of both would run)
if not config:

    configfile: "workflow/config/default.yaml"



# the config file(s) in errors: --configfile's, else the default
_CONFIG_NAME = " + ".join(str(f) for f in workflow.overwrite_configfiles or ()) or "workflow/config/default.yaml"
# `seeds:` first (the schema's messages name neither file nor value), then the config's schema, then
# every params layer the config uses (clear error naming file/key)
R.check_seeds(config, _CONFIG_NAME)
R.check_config_files(workflow.configfiles)  # a key given twice, a byte that is not UTF-8
validate(config, "workflow/schemas/config.schema.json")
PLAN = R.plan_from_config(config, source=_CONFIG_NAME)
# files that only a person can fetch (share pages): said now, before any job runs (dry runs too)
for _note in R.manual_fetches(PLAN):
    print(f"NOTE {_note}", file=sys.stderr)
for _note in R.missing_local(PLAN):
    print(f"ERROR {_note}", file=sys.stderr)


wildcard_constraints:
    dataset="|".join(d.name for d in PLAN.datasets),
    variant=R.variant_regex(PLAN),
    seed="[0-9]+",
    split="[a-z0-9_]+",


rule all:
    """Every table, figure and metrics file of the config."""
    input:
        R.targets(PLAN),
    default_target: True
    localrule: True


# one target per dataset: `snakemake dataset_<name>` builds its metrics, checkpoints and figures
# (not the tables: reports/table*.tex are the paper's tables, rebuilt by `all`)
for _d in PLAN.datasets:

    rule:
        name:
            f"dataset_{_d.name}"
        input:
            R.dataset_targets(PLAN, _d.name),
        localrule: True


# a local run's jobs skip the ~3 CPU s of imports each: one pre-imported runner forks them
# (fian_pipeline/runner.py; off with FIAN_NO_RUNNER=1; never for SLURM jobs or --use-conda)
from fian_pipeline import runner as _runner

_RUNNER = []


onstart:
    _RUNNER.append(_runner.start_for_workflow(workflow, log))


onsuccess:
    for _p in _RUNNER:
        _runner.stop(_p)


onerror:
    for _p in _RUNNER:
        _runner.stop(_p)


include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/reports.smk"
