#!/usr/bin/env bash
# Prepares the GPU check (bench/gpu_check.sh) here, on the CPU machine, and prints the device calls to make.
#
#   bash bench/gpu_prepare.sh            # from the project root, in its virtual environment
#   bash bench/gpu_prepare.sh --force    # rebuild the model bundle even if .gpu-models/kdgpu exists
#
# The GPU machine has no teacher packages and a device call carries at most 64 MiB, so this script
#   1. saves the two installed teachers (all-MiniLM-L6-v2, all-mpnet-base-v2) with fp16 weights, their
#      configs and tokenizers, and SST-2's train/dev files, into .gpu-models/kdgpu (git-ignored);
#   2. splits that folder with ../shared/gpu/stage-split into .gpu-stage/kdgpu-partK (24 MiB each);
#   3. copies the kit's wheels to .gpu-wheels with ../shared/gpu/prepare if they are not there;
#   4. prints the device calls: staging calls that copy parts into /tmp/stage (kept only while the machine
#      is warm, about 30 s after each call, so back to back), then the check itself, which joins them.
# It also writes that list to .gpu-stage/calls.txt.  Calls are packed up to 64 MiB each, counting the
# working tree and GPU_PREPARE_SHARED_MB (default 28) for the shared/ folder the kit says travels with
# every call; set it to 0 where none does, and each staging call takes two parts.
set -euo pipefail
cd "$(dirname "$0")/.."

kit=../shared/gpu
name=kdgpu
bundle=.gpu-models/$name
PY=${PYTHON:-python}
LIMIT=$(( 64 * 1024 * 1024 - 1024 * 1024 ))   # a call's 64 MiB, less 1 MiB for what we cannot count
force=0
case ${1:-} in
  --force) force=1 ;;
  "") ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "gpu_prepare: unknown argument $1 (--force, --help)" >&2; exit 2 ;;
esac

[[ -x $kit/stage-split && -x $kit/prepare ]] || { echo "gpu_prepare: no GPU kit at $kit (stage-split, prepare)" >&2; exit 1; }
"$PY" -c 'import harness' 2>/dev/null || { echo "gpu_prepare: $PY cannot import harness: activate the project's venv (. .venv/bin/activate)" >&2; exit 1; }
glue=${GLUE_DIR:-../shared/glue}
[[ -f $glue/SST-2/train.tsv && -f $glue/SST-2/dev.tsv ]] || { echo "gpu_prepare: no SST-2 under $glue (set GLUE_DIR)" >&2; exit 1; }

# 1. the bundle, built aside and renamed, so an interrupted build is never taken for a finished one
if (( force )) || [[ ! -d $bundle ]]; then
  echo "== saving the teachers in fp16 into $bundle"
  rm -rf "$bundle" "$bundle.tmp"
  mkdir -p "$bundle.tmp/glue/SST-2"
  "$PY" bench/gpu_kit.py local all-MiniLM-L6-v2 all-mpnet-base-v2 > .gpu-models/local.txt
  while IFS== read -r card dir; do
    "$PY" bench/gpu_kit.py shrink "$dir" "$bundle.tmp/$card"
  done < .gpu-models/local.txt
  cp "$glue/SST-2/train.tsv" "$glue/SST-2/dev.tsv" "$bundle.tmp/glue/SST-2/"
  mv "$bundle.tmp" "$bundle"
else
  echo "== reusing $bundle (--force rebuilds it)"
fi
du -sh "$bundle"/* | sed 's/^/   /'

# 2. the parts; stale ones of an earlier, larger bundle would otherwise be carried and joined too
rm -rf .gpu-stage/"$name"-part*
"$kit"/stage-split "$name" "$bundle"
n=$(ls -d .gpu-stage/"$name"-part* | wc -l)
sizes=() total=0
for (( k = 0; k < n; k++ )); do
  sizes[k]=$(du -cb .gpu-stage/"$name-part$k"/* | tail -1 | cut -f1)
  total=$(( total + sizes[k] ))
done
sha=$(for (( k = 0; k < n; k++ )); do cat .gpu-stage/"$name-part$k"/*; done | sha256sum | cut -d' ' -f1)

# 3. the wheels the GPU machine lacks (deepspeed, datasets, pydantic, ...)
[[ -f .gpu-wheels/env.sh ]] || "$kit"/prepare

# 4. what each call carries: the working tree (tracked and untracked files that git does not ignore),
# the shared/ folder, then the parts; the check's call takes the wheels and as many trailing parts as fit
# (a tracked file deleted from the tree is listed but cannot be stat'ed: it does not travel either)
tree=$( { git ls-files -z -c -o --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null || true; } | awk '{ s += $1 } END { print s + 0 }')
shared=$(( ${GPU_PREPARE_SHARED_MB:-28} * 1000 * 1000 ))
wheels=$(du -cb .gpu-wheels/* | tail -1 | cut -f1)
base=$(( tree + shared ))
(( base + sizes[0] <= LIMIT )) || { echo "gpu_prepare: the working tree ($(( tree / 1000000 )) MB) leaves no room for a 24 MiB part" >&2; exit 1; }
main_bytes=$(( base + wheels )) first_main=$n
while (( first_main > 0 && main_bytes + sizes[first_main - 1] <= LIMIT )); do
  first_main=$(( first_main - 1 )); main_bytes=$(( main_bytes + sizes[first_main] ))
done
calls=() cur="" cur_bytes=$base
for (( k = 0; k < first_main; k++ )); do
  if [[ -n $cur ]] && (( cur_bytes + sizes[k] > LIMIT )); then calls+=("$cur"); cur="" cur_bytes=$base; fi
  cur+="$k " cur_bytes=$(( cur_bytes + sizes[k] ))
done
[[ -z $cur ]] || calls+=("$cur")

commit=$(git rev-parse HEAD)
dirty=0
[[ -z $(git status --porcelain --untracked-files=no -- . ':(exclude)results') ]] || dirty=1

carry_of() {  # carry_of EXTRA... K...: a JSON list of the extra paths and the parts K
  local items=() k
  for k in "$@"; do [[ $k =~ ^[0-9]+$ ]] && items+=("\".gpu-stage/$name-part$k\"") || items+=("\"$k\""); done
  local IFS=,; echo "[${items[*]}]"
}
copy_of() {  # copy_of K...: the command that puts the parts K into /tmp/stage
  local k cmd="mkdir -p /tmp/stage"
  for k in "$@"; do cmd+=" && cp .gpu-stage/$name-part$k/* /tmp/stage/"; done
  echo "$cmd"
}

ncalls=$(( ${#calls[@]} + 1 ))
main_parts=""
(( first_main >= n )) || main_parts=$(seq -s ' ' "$first_main" $(( n - 1 )))
cmd="source .gpu-wheels/env.sh && KD_GPU_COMMIT=$commit KD_GPU_DIRTY=$dirty KD_GPU_STAGE_PARTS=$n KD_GPU_STAGE_SHA256=$sha bash bench/gpu_check.sh"
# shellcheck disable=SC2086
[[ -z $main_parts ]] || cmd="$(copy_of $main_parts) && $cmd"
{
  echo "GPU check: $n parts ($(( total / 1000000 )) MB, sha256 ${sha:0:12}...), $ncalls device calls; per call: tree $(( tree / 1000000 )) MB + shared $(( shared / 1000000 )) MB counted."
  echo "Make them back to back: /tmp on the machine survives only ~30 s after a call. A staging call after the"
  echo "first that reports warm: false, or prints fewer parts than it should, has lost the earlier ones: restart at call 1."
  i=0
  for c in "${calls[@]}"; do
    i=$(( i + 1 ))
    # shellcheck disable=SC2086
    echo; echo "call $i/$ncalls (staging): timeout_s 60, carry $(carry_of $c)"
    # shellcheck disable=SC2086
    echo "  $(copy_of $c) && ls /tmp/stage | tr '\\n' ' '"
  done
  echo; echo "call $ncalls/$ncalls (the check, about 8 min; $(( main_bytes / 1000000 )) MB carried): timeout_s 600, carry $(carry_of .gpu-wheels $main_parts)"
  echo "  $cmd"
  echo
  echo "Then give_back. What comes back (files_at): summary.json, gpu_check.log, kd_throughput.json, records.tar.gz;"
  echo "commit summary.json as results/bench/gpu_check.json and kd_throughput.json as results/bench/kd_throughput_gpu.json."
} | tee .gpu-stage/calls.txt
(( ${#cmd} <= 2000 )) || { echo "gpu_prepare: the check's command is ${#cmd} characters (at most 2,000)" >&2; exit 1; }
if [[ ! -d shared && -z ${GPU_PREPARE_SHARED_MB:-} ]]; then
  echo "NOTE: this checkout has no shared/ folder, and the device's README says ../shared does not travel; if so,"
  echo "      GPU_PREPARE_SHARED_MB=0 bash bench/gpu_prepare.sh packs two parts a call (fewer calls, less device time)."
fi
(( dirty == 0 )) || echo "NOTE: tracked files differ from $commit: the summary names that commit as dirty; commit first, then rerun this script."
