# FIAN pipeline.  The rules live in workflow/rules/*.smk, rendered from fian_pipeline/registry.py
# (`fian render`); this file loads and validates the config, resolves the plan and includes them.
#
#   snakemake --profile workflow/profiles/local                      # the demo (synthetic)
#   snakemake --profile workflow/profiles/local --configfile workflow/config/paper.yaml
#   snakemake --profile workflow/profiles/slurm --configfile workflow/config/paper.yaml

from snakemake.utils import min_version, validate

from fian_pipeline import registry as R

min_version("9.0")

# one id per workflow invocation (jobs inherit it, SLURM jobs too): their MLflow runs become the
# children of one parent run per experiment (fian.tracking, docs/TRAINING.md "MLflow")
import datetime as _dt, os as _os, uuid as _uuid

_os.environ.setdefault("FIAN_WORKFLOW_RUN", f"{_dt.datetime.now(_dt.UTC):%Y%m%dT%H%M%SZ}-{_uuid.uuid4().hex[:8]}")


# the demo config unless --configfile/--config give one (Snakemake would MERGE a second config
# file into the first: datasets of both would run)
if not config:

    configfile: "workflow/config/default.yaml"



# the config's schema first, then every params layer the config uses (clear error naming file/key)
validate(config, "workflow/schemas/config.schema.json")
PLAN = R.plan_from_config(config)


wildcard_constraints:
    dataset="|".join(d.name for d in PLAN.datasets),
    variant=R.variant_regex(PLAN),
    split="[a-z]+",


rule all:
    """Every table, figure and metrics file of the config."""
    input:
        R.targets(PLAN),
    default_target: True


include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/reports.smk"
