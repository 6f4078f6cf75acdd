#!/bin/bash
# How the committed study records are produced: the three studies, every record at one commit.  A
# worktree of that commit trains; records go to this checkout's results/ (commit them as each cell's
# seeds finish).  Re-running skips committed records and resumes an interrupted seed.
#   bash results/campaign.sh 86a30af            # from the checkout's root; logs in /tmp/campaign-<study>.log
# Two lanes, one thread each (zoo then soft_ablation; multi_teacher): on this 2-core CPU two 1-thread
# trainings together do about 1.36x the examples/s of one 2-thread training (3-block MiniLM student,
# batch 32, length 128, bf16 autocast: 19.8 + 19.9 against 29.2 ex/s).  Rows two studies share are
# trained once where one lane finds the other's record (a run being trained by the other lane is not
# waited for: both may train it).  CAMPAIGN_LANES=1 runs the three studies one after another on every core.
# A lost cache costs only time: teachers are trained again, as their records were (campaign_teachers.py).
set -u
commit=${1:?usage: bash results/campaign.sh COMMIT}
main=$(git rev-parse --show-toplevel)
tree=${CAMPAIGN_TREE:-$main/../campaign}
[ -d "$tree" ] || git -C "$main" worktree add "$tree" "$commit" || exit 1
[ "$(git -C "$tree" rev-parse HEAD)" = "$(git -C "$main" rev-parse "$commit")" ] || { echo "$tree is not at $commit"; exit 1; }
export GLUE_DIR=${GLUE_DIR:-$main/../shared/glue} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py=${PYTHON:-python}
cd "$tree" || exit 1

lane() {
  for s in "$@"; do
    echo "$(date -u +%FT%T) start $s"
    # run from the worktree: `python -m harness` imports the harness of the current folder, its commit's
    $py -m harness study run "studies/$s.yaml" --results-dir "$main/results" >> "/tmp/campaign-$s.log" 2>&1
    rc=$?  # before the echo: a command substitution there would reset $?
    echo "$(date -u +%FT%T) end $s rc=$rc"
  done
}

# teachers whose committed records a lane could not reproduce (trained with more threads): into the
# cache first, each with its record's thread count (a no-op for those already cached)
# (with two lanes, those whose records say 1 thread are left to the lanes)
lanes=${CAMPAIGN_LANES:-2}
PYTHONPATH=$tree $py "$main/results/campaign_teachers.py" $([ "$lanes" = 1 ] || echo --lane-threads 1) "$main/results" studies/zoo.yaml \
  studies/multi_teacher.yaml studies/soft_ablation.yaml >> /tmp/campaign-teachers.log 2>&1 || exit 1

if [ "$lanes" = 1 ]; then
  lane zoo soft_ablation multi_teacher
else
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # read when torch loads; the records' env.json says cpu_threads 1
  lane zoo soft_ablation &
  lane multi_teacher &
  wait
fi
