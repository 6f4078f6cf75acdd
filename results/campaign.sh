#!/bin/bash
# How the committed study records are produced: the three studies, every record at one commit.  A
# worktree of that commit trains; records go to this checkout's results/ (commit them as each cell's
# seeds finish).  Re-running skips committed records and resumes an interrupted seed.
#   bash results/campaign.sh 86a30af            # from the checkout's root; logs in /tmp/campaign-<part>.log
# Two lanes, one thread each: on this 2-core CPU two 1-thread trainings together do about 1.36x the
# examples/s of one 2-thread training (3-block MiniLM student, batch 32, length 128, bf16 autocast:
# 19.8 + 19.9 against 29.2 ex/s).  A record one lane is training is waited for by the other (a lock per
# record), then reused; a row two studies share is copied from the study that has it.
# CAMPAIGN_LANES=1 runs every part one after another on every core.
# A lost cache (a new machine) costs only time: teachers are trained again, as their records were
# (campaign_teachers.py first, for those whose records were trained with more threads than a lane has).
set -u
commit=${1:?usage: bash results/campaign.sh COMMIT}
main=$(git rev-parse --show-toplevel)
tree=${CAMPAIGN_TREE:-$main/../campaign}
[ -d "$tree" ] || git -C "$main" worktree add "$tree" "$commit" || exit 1
[ "$(git -C "$tree" rev-parse HEAD)" = "$(git -C "$main" rev-parse "$commit")" ] || { echo "$tree is not at $commit"; exit 1; }
export GLUE_DIR=${GLUE_DIR:-$main/../shared/glue} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py=${PYTHON:-python}
cd "$tree" || exit 1

# The zoo runs in two parts, both named zoo (one records folder): its 3-block rows as the commit has
# them, and its MobileBERT rows from this checkout's recipes.  Those were redesigned after the commit
# (14ac481: general-text layer-wise phase first, LayerNorm) as recipes only, which the commit's code
# trains unchanged; the commit's own MobileBERT recipes (task data only, NoNorm) collapsed.
parts=${TMPDIR:-/tmp}/kd-campaign
mkdir -p "$parts"
{ echo "name: zoo"; grep -v mobilebert studies/zoo.yaml; } > "$parts/zoo_3block.yaml"
cat > "$parts/zoo_mobilebert.yaml" <<EOF
name: zoo
description: "the zoo's MobileBERT rows, from $main/recipes"
recipes:
  - "recipes/glue/{task}/nokd/minilm3L_from_minilm.yaml"
  - "$main/recipes/glue/{task}/mobilebert_*/mobilebert6L_from_minilm.yaml"
tasks: [cola, mrpc, rte, stsb, wnli, sst2]
seeds: [0, 1, 2]
baseline: nokd/minilm3L_from_minilm
EOF
cp studies/multi_teacher.yaml studies/soft_ablation.yaml "$parts/"
# the second lane starts soft_ablation from its last tasks, so that the two lanes meet instead of
# waiting on each other's locks cell after cell
{ echo "name: soft_ablation"; sed 's/^tasks:.*/tasks: [sst2, stsb, wnli]/' studies/soft_ablation.yaml; } \
  > "$parts/soft_ablation_tail.yaml"
# and then, soft_ablation done, it takes the MobileBERT rows from their last task back (they are the
# longest part: about 10 h of one lane), meeting the first lane there
sed 's/^tasks:.*/tasks: [sst2, wnli, stsb, rte, mrpc, cola]/' "$parts/zoo_mobilebert.yaml" > "$parts/zoo_mobilebert_tail.yaml"

lane() {
  for s in "$@"; do
    echo "$(date -u +%FT%T) start $s"
    log=/tmp/campaign-$s.log
    from=$(($(stat -c %s "$log" 2>/dev/null || echo 0) + 1))  # this start's output: from this byte on
    # run from the worktree: `python -m harness` imports the harness of the current folder, its commit's
    $py -m harness study run "$parts/$s.yaml" --results-dir "$main/results" >> "$log" 2>&1 &
    pid=$!
    # With every recipe done, the commit's `study run` measures each architecture's speed, under the
    # other lane's load (15-30 min); the committed speed tables are measured apart, with the lanes
    # paused (`study speed`), so the part ends there.  A part already complete ends at once.
    while kill -0 "$pid" 2>/dev/null; do
      if tail -c "+$from" "$log" | grep -aq "recipes done, 0 left"; then
        sleep 10 && kill "$pid" 2>/dev/null
        break
      fi
      sleep 30
    done
    wait "$pid"
    rc=$?  # before the echo: a command substitution there would reset $?
    echo "$(date -u +%FT%T) end $s rc=$rc"
  done
}

# teachers whose committed records a lane could not reproduce (trained with more threads): into the
# cache first, each with its record's thread count (a no-op for those already cached)
# (with two lanes, those whose records say 1 thread are left to the lanes)
lanes=${CAMPAIGN_LANES:-2}
PYTHONPATH=$tree $py "$main/results/campaign_teachers.py" $([ "$lanes" = 1 ] || echo --lane-threads 1) "$main/results" \
  "$parts/zoo_3block.yaml" "$parts/zoo_mobilebert.yaml" "$parts/multi_teacher.yaml" "$parts/soft_ablation.yaml" \
  >> /tmp/campaign-teachers.log 2>&1 || exit 1

if [ "$lanes" = 1 ]; then
  lane zoo_3block zoo_mobilebert multi_teacher soft_ablation
else
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # read when torch loads; the records' env.json says cpu_threads 1
  lane zoo_3block zoo_mobilebert soft_ablation &
  lane multi_teacher soft_ablation_tail soft_ablation zoo_mobilebert_tail &
  wait
fi
