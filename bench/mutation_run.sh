#!/usr/bin/env bash
# One mutmut run over one module of issue 20 item 5, from a clean copy (docs/MUTATION.md section 5).
#
#   bench/mutation_run.sh COMMIT MODULE DIR [MINUTES [GLOB...]]
#
# MODULE: inference | text | predict | train.  The copy (git archive COMMIT into DIR) gets its own
# [tool.mutmut] only_mutate / test selection for that module (below), so the committed pyproject
# config, and with it the runs of sections 2-4, stay as they were.  mutmut 3 skips decorated
# functions: in the copy, `decode` and `Predictor.predict_many` lose their `@torch.no_grad()` line
# and get it back as a wrapper at the end of their module (`decode = torch.no_grad()(decode)`), so
# their bodies are mutated and still run without autograd.  One worker at nice 15 (the shared
# 2-core box); the run stops after MINUTES (default 30) whatever remains; then `mutmut results`.
set -euo pipefail
commit=$1 module=$2 dir=$3 minutes=${4:-30}
shift $(( $# < 4 ? $# : 4 ))
case $module in
  inference) src=fian/inference.py
    tests='"tests/test_inference.py", "tests/test_mutants.py", "tests/test_mutants_io.py"' ;;
  text) src=fian/data/text.py
    tests='"tests/test_text.py", "tests/test_glove.py", "tests/test_bad_inputs.py", "tests/test_silent_inputs.py",
  "tests/test_prepare.py", "tests/test_mutants_io.py"' ;;
  predict) src=fian/predict.py
    tests='"tests/test_mutants_io.py", "tests/test_predict.py::test_released_features_are_marked_not_recomputable",
  "tests/test_predict.py::test_pyfunc_errors_map_to_400_and_a_bare_500",
  "tests/test_predict.py::test_config_diff_says_which_keys_differ_and_whether_they_matter"' ;;
  train) src=fian/train.py
    tests='"tests/test_mutants_io.py", "tests/test_train.py::test_resume_continues_exactly",
  "tests/test_train.py::test_nonfinite_loss_names_the_batch", "tests/test_train.py::test_infinite_lr_is_caught",
  "tests/test_train.py::test_checkpoint_carries_config_and_rebuilds_model",
  "tests/test_train.py::test_word_vectors_train_only_when_not_frozen_and_the_checkpoint_keeps_them"' ;;
  *) echo "module must be inference, text, predict or train, got $module" >&2; exit 2 ;;
esac
root=$(git rev-parse --show-toplevel)
rm -rf "$dir" && mkdir -p "$dir"
git -C "$root" archive "$commit" | tar -x -C "$dir"
cd "$dir"
SRC=$src TESTS=$tests python - <<'EOF'
import os
import re
from pathlib import Path

tests = [t.strip().strip('"') for t in os.environ["TESTS"].replace("\n", " ").split(",")]
tests = [t for t in tests if Path(t.split("::")[0]).is_file()]  # tests/test_mutants_io.py: not at every commit
p = Path("pyproject.toml")
text = p.read_text()
text = re.sub(r"^only_mutate = \[.*?\]$", f'only_mutate = ["{os.environ["SRC"]}"]', text, count=1, flags=re.M)
text, n = re.subn(r"^pytest_add_cli_args_test_selection = \[.*?^\]$",
                  "pytest_add_cli_args_test_selection = [\n" + "".join(f'  "{t}",\n' for t in tests) + "]", text, count=1,
                  flags=re.M | re.S)
assert n == 1, "no test selection in pyproject.toml"
p.write_text(text)
for path, line, wrap in (
    ("fian/inference.py", "@torch.no_grad()\ndef decode(", "\ndecode = torch.no_grad()(decode)\n"),
    ("fian/predict.py", "    @torch.no_grad()\n    def predict_many(",
     "\nPredictor.predict_many = torch.no_grad()(Predictor.predict_many)\n"),
):
    f = Path(path)
    s = f.read_text()
    assert s.count(line) == 1, f"{path}: decorator not found"
    f.write_text(s.replace(line, line.split("\n")[1]) + wrap)
EOF
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "$(date -u +%FT%TZ) mutmut run $module ($src) at $commit, cap ${minutes} min, globs: ${*:-none}"
rc=0
timeout "${minutes}m" nice -n 15 mutmut run --max-children 1 "$@" || rc=$?
echo "$(date -u +%FT%TZ) mutmut exit $rc (124: stopped by the cap)"
mutmut results --all true > results.txt || true
grep -c ": killed" results.txt || true
