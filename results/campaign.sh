#!/bin/bash
# How the committed study records are produced: the three studies, one after another, every record at
# one commit.  A worktree of that commit trains; records go to this checkout's results/ (commit them as
# each cell's seeds finish).  Re-running skips committed records and resumes an interrupted seed.
#   bash results/campaign.sh 86a30af            # from the checkout's root; logs in /tmp/campaign-<study>.log
set -u
commit=${1:?usage: bash results/campaign.sh COMMIT}
main=$(git rev-parse --show-toplevel)
tree=${CAMPAIGN_TREE:-$main/../campaign}
[ -d "$tree" ] || git -C "$main" worktree add "$tree" "$commit" || exit 1
[ "$(git -C "$tree" rev-parse HEAD)" = "$(git -C "$main" rev-parse "$commit")" ] || { echo "$tree is not at $commit"; exit 1; }
export GLUE_DIR=${GLUE_DIR:-$main/../shared/glue} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py=${PYTHON:-python}
cd "$tree" || exit 1
for s in zoo soft_ablation multi_teacher; do
  echo "$(date -u +%FT%T) start $s"
  # run from the worktree: `python -m harness` imports the harness of the current folder, its commit's
  $py -m harness study run "studies/$s.yaml" --results-dir "$main/results" >> "/tmp/campaign-$s.log" 2>&1
  rc=$?  # before the echo: a command substitution there would reset $?
  echo "$(date -u +%FT%T) end $s rc=$rc"
done
