#!/usr/bin/env bash
# The GPU check of issue 24, item 4: one device call on an H100/H200 that
#   stage              joins the teachers staged by bench/gpu_prepare.sh (/tmp/stage) and widens them to fp32;
#   e2e                runs the bf16 path end to end (`harness run` on the quickstart's SST-2 KD recipe, seed 0,
#                      precision auto = bf16 on the GPU), then `harness verify` on its record and tables;
#   throughput_minilm  bench/kd_throughput.py --pair minilm: plain loops (pad 128, pad per batch) vs the harness
#   throughput_mpnet   bench/kd_throughput.py --pair mpnet    (fp32 and auto), examples/s and MFU;
#   cache_parity       bench/cache_parity.py on the same recipe: bf16 teacher-output cache on vs off;
#   full_sst2          one full-size SST-2 run: all 67,349 training examples, the MiniLM teacher fine-tuned on
#                      them, then distilled into 3 of its blocks;
# and writes to $OUT (at most 8 files come back): summary.json (machine, versions, commit, each step's status,
# wall time and figures), gpu_check.log (every step's output), kd_throughput.json and records.tar.gz (run
# records, tables, teacher records, cards, per-step logs).
#
# Each step runs under `timeout` within one overall budget (GPU_CHECK_BUDGET_S, default 460 s, so the call
# ends inside 8 minutes), with time kept back for the full-size run; a failed or timed-out step is named in
# the summary and the next one runs.  Exit status: 0 when every step passed, 1 otherwise.
#
#   device call:  source .gpu-wheels/env.sh && bash bench/gpu_check.sh        (bench/gpu_prepare.sh prints it)
#   here (CPU):   GLUE_DIR=../shared/glue bash bench/gpu_check.sh --smoke --out /tmp/gpu-smoke
#
# --smoke (or GPU_CHECK_SMOKE=1) runs the same steps on the CPU with tiny sizes (64-128 examples, 1 epoch),
# reading the teachers where `python -m harness teachers install` put them instead of /tmp/stage.
# Knobs: GPU_CHECK_BUDGET_S, GPU_CHECK_STEPS="e2e full_sst2" (only those; to redo a failed step),
# GPU_CHECK_TP_MINILM / GPU_CHECK_TP_MPNET (examples), GPU_CHECK_PARITY_SEEDS ("0 1"),
# GPU_CHECK_FULL_TEACHER_EPOCHS (2), GPU_CHECK_KEEP=1 (keep the work folder).
set -euo pipefail
cd "$(dirname "$0")/.."
# Everything below is in functions, called on the last line: bash then parses the whole file before it runs
# any of it, so editing this file while a check runs cannot change the running check.

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "gpu_check: $*" >&2; exit 2; }

parse_args() {
  smoke=${GPU_CHECK_SMOKE:-0} out=${OUT:-}
  while (( $# )); do
    case $1 in
      --smoke) smoke=1 ;;
      --out) [[ $# -ge 2 ]] || die "--out needs a folder"; out=$2; shift ;;
      -h|--help) usage 0 ;;
      *) echo "gpu_check: unknown argument $1" >&2; usage 2 ;;
    esac
    shift
  done
}

# The sizes of each step: tiny on the CPU (--smoke), fitted to about 7.5 minutes on one H100/H200.
sizes() {
  MINILM=all-MiniLM-L6-v2 MPNET=all-mpnet-base-v2
  RECIPE=recipes/glue/sst2/kd/minilm3L_from_minilm.yaml
  if (( smoke )); then
    mode=smoke budget=${GPU_CHECK_BUDGET_S:-3600}
    # the recipe's teacher and student on 64 examples, 1 epoch; the speed figures on 2 iterations
    quick=(--set teachers.0.finetune.max_train_examples=64 --set teachers.0.finetune.epochs=1
           --set training.max_train_examples=64 --set training.epochs=1 --set speed.iters=2)
    full=(--set training.seed=0 --set teachers.0.finetune.max_train_examples=96 --set teachers.0.finetune.epochs=1
          --set training.max_train_examples=96 --set training.epochs=1 --set speed.iters=2)
    tp_minilm=(--examples 128 --epochs 1) tp_mpnet=(--examples 128 --epochs 1)  # 4 batches: 3 warm-up, 1 timed
    # generous caps: the figures do not matter here, and a shared 2-core machine can be 5x slower than idle
    caps=(e2e=900 throughput_minilm=900 throughput_mpnet=900 cache_parity=900) full_reserve=600
  else
    mode=gpu budget=${GPU_CHECK_BUDGET_S:-460}
    # the quickstart's recipe as it is: teacher 8k examples x 3 epochs, student 4k x 2 epochs
    quick=()
    # all of SST-2 for teacher and student, 2 epochs each (the card says 3 for the teacher: 2 to fit the
    # budget); no mid-epoch checkpoints (each writes the model and AdamW state: seconds the budget lacks)
    full=(--set training.seed=0 --set training.max_train_examples=null --set teachers.0.finetune.max_train_examples=null
          --set teachers.0.finetune.epochs="${GPU_CHECK_FULL_TEACHER_EPOCHS:-2}" --checkpoint-every 1000000)
    tp_minilm=(--examples "${GPU_CHECK_TP_MINILM:-8192}" --epochs 2)
    tp_mpnet=(--examples "${GPU_CHECK_TP_MPNET:-4096}" --epochs 2)
    caps=(e2e=120 throughput_minilm=75 throughput_mpnet=100 cache_parity=100) full_reserve=230
  fi
  read -r -a parity_seeds <<< "${GPU_CHECK_PARITY_SEEDS:-0}"
}

cap_of() { local kv; for kv in "${caps[@]}"; do [[ ${kv%%=*} == "$1" ]] && { echo "${kv#*=}"; return; }; done; echo 0; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# record NAME STATUS RC WALL LIMIT NOTE: one line of $work/steps.jsonl (gpu_kit.py summary reads them)
record() {
  printf '{"step": "%s", "status": "%s", "rc": %s, "wall_s": %s, "limit_s": %s, "note": "%s"}\n' \
    "$1" "$2" "$3" "$4" "$5" "$6" >> "$work/steps.jsonl"
}

# step NAME RESERVE CMD...: CMD under timeout, its output in $work/logs/NAME.log.  Its limit is the step's cap,
# cut so that RESERVE seconds remain for the steps after it before the deadline.
step() {
  local name=$1 reserve=$2; shift 2
  local cap limit rc status wall
  cap=$(cap_of "$name")
  limit=$(( deadline - $(date +%s) - reserve ))
  (( cap > 0 && cap < limit )) && limit=$cap
  local why=${blocked:-}
  (( limit >= 10 )) || why=${why:-only ${limit}s left before the deadline}
  # GPU_CHECK_STEPS="e2e full_sst2" runs only those (to redo a failed one); the others are named as skipped
  [[ -z ${GPU_CHECK_STEPS:-} || " $GPU_CHECK_STEPS " == *" $name "* ]] || why=${why:-not in GPU_CHECK_STEPS}
  if [[ -n $why ]]; then
    echo "-- $name: skipped ($why)"
    record "$name" skipped null 0 "$limit" "$why"
    return 0
  fi
  echo "-- $name (limit ${limit}s)"
  echo "\$ $*" > "$work/logs/$name.log"
  current=$name current_t0=$(date +%s.%N) current_limit=$limit
  set +e
  timeout --kill-after=10 "$limit" "$@" >> "$work/logs/$name.log" 2>&1
  rc=$?
  set -e
  wall=$(since "$current_t0") current=""
  case $rc in 0) status=ok ;; 124|137) status=timed_out ;; *) status=failed ;; esac
  record "$name" "$status" "$rc" "$wall" "$limit" ""
  echo "   $status (rc $rc) in ${wall}s"
  # progress bars end their updates with \r: one line each, so that the tail shows the last 15 lines
  [[ $status == ok ]] || tr '\r' '\n' < "$work/logs/$name.log" | grep -v '^ *$' | tail -n 15 | sed 's/^/   | /' || true
}

# The teachers: on the GPU machine, the parts that the device calls before this one copied to /tmp/stage
# (checked against gpu_prepare.sh's count and checksum, so a machine that went cold between calls is named
# as such); in smoke mode, the installed checkpoints.
stage() {  # called in an `if`, where set -e is off: every command says || return 1
  if (( smoke )); then
    glue=${GLUE_DIR:-../shared/glue}
    # where `teachers install` put them: MPNet is assembled in the user's cache, not in ours
    local envs=(-u KD_HARNESS_CACHE)
    [[ -z $user_cache ]] || envs=("KD_HARNESS_CACHE=$user_cache")
    env "${envs[@]}" "$PY" bench/gpu_kit.py local "$MINILM" "$MPNET" > "$work/models.txt" || return 1
    return 0
  fi
  local parts=(/tmp/stage/kdgpu.tar.*) g
  [[ -e ${parts[0]} ]] || { echo "no /tmp/stage/kdgpu.tar.*: make the staging calls of bench/gpu_prepare.sh first, back to back"; return 1; }
  if [[ -n ${KD_GPU_STAGE_PARTS:-} && ${#parts[@]} -ne $KD_GPU_STAGE_PARTS ]]; then
    echo "have ${#parts[@]} of $KD_GPU_STAGE_PARTS parts (${parts[*]##*/}): the machine went cold between calls? stage all parts again"
    return 1
  fi
  if [[ -n ${KD_GPU_STAGE_SHA256:-} && $(cat "${parts[@]}" | sha256sum | cut -d' ' -f1) != "$KD_GPU_STAGE_SHA256" ]]; then
    echo "the staged parts differ from gpu_prepare.sh's checksum"; return 1
  fi
  rm -rf /tmp/kdgpu && cat "${parts[@]}" | tar -x -C /tmp || return 1
  "$PY" bench/gpu_kit.py widen "/tmp/kdgpu/$MINILM" "/tmp/kdgpu/$MPNET" || return 1
  printf '%s\n' "$MINILM=/tmp/kdgpu/$MINILM" "$MPNET=/tmp/kdgpu/$MPNET" > "$work/models.txt"
  # the staged SST-2 first: a checkout's ../shared does not travel to the device
  glue=${GLUE_DIR:-}
  for g in /tmp/kdgpu/glue shared/glue ../shared/glue; do
    [[ -z $glue && -d $g/SST-2 ]] && glue=$g
  done
  return 0
}

# runs at exit, also after an error of this script itself: the summary and the files are always written
finish() {
  set +e
  # a step still running here was cut short: by a signal (the device's limit), or by an error of this script
  [[ -z ${current:-} ]] || record "$current" interrupted null "$(since "$current_t0")" "$current_limit" "cut short"
  "$PY" bench/gpu_kit.py summary "$work" "$out/summary.json" --mode "$mode" --budget "$budget"
  local ok=$?
  local name
  for name in stage e2e throughput_minilm throughput_mpnet cache_parity full_sst2; do
    [[ -f $work/logs/$name.log ]] && { echo "===== $name ====="; cat "$work/logs/$name.log"; }
  done > "$out/gpu_check.log"
  [[ -f $work/kd_throughput.json ]] && cp "$work/kd_throughput.json" "$out/"
  # the run records (teachers' too: `harness run` writes them beside the students'), tables, cards, logs
  tar -czf "$out/records.tar.gz" -C "$work" --ignore-failed-read e2e cache_parity full_sst2 cards logs \
    models.txt steps.jsonl 2>/dev/null
  echo "wrote $(ls "$out" | tr '\n' ' ')in $out ($(( $(date +%s) - start )) s in all)"
  [[ ${GPU_CHECK_KEEP:-0} == 1 ]] && echo "kept $work" || rm -rf "$work"
  exit $(( ok == 0 ? 0 : 1 ))
}

# staging and the cards, recorded like a step; when it fails, every step after it is skipped and named
prepare_teachers() {
  local t0 status=ok
  t0=$(date +%s.%N)
  if ! stage > "$work/logs/stage.log" 2>&1; then
    status=failed
  elif [[ ! -d ${glue:-}/SST-2 ]]; then
    status=failed
    echo "no GLUE folder with SST-2 (GLUE_DIR, /tmp/kdgpu/glue, shared/glue, ../shared/glue)" >> "$work/logs/stage.log"
  elif ! "$PY" bench/gpu_kit.py cards "$work/cards" $(cat "$work/models.txt") >> "$work/logs/stage.log" 2>&1; then
    status=failed
  fi
  record stage "$status" "$([[ $status == ok ]] && echo 0 || echo 1)" "$(since "$t0")" null ""
  echo "-- stage: $status"
  if [[ $status != ok ]]; then
    blocked="staging failed: see stage in gpu_check.log"
    sed 's/^/   | /' "$work/logs/stage.log"
  fi
  export GLUE_DIR=${glue:-}
}

main() {
  parse_args "$@"
  sizes
  PY=${PYTHON:-python3}
  start=$(date +%s)
  deadline=$(( start + budget - 15 ))   # 15 s for the summary and the tar at the end
  [[ -n $out ]] || (( smoke )) || die "set OUT or pass --out DIR (the device sets OUT)"
  work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
  mkdir -p "$work/logs"
  [[ -n $out ]] || out=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-out.XXXXXX")   # smoke without --out
  mkdir -p "$out"
  user_cache=${KD_HARNESS_CACHE:-}
  # a cache and a card folder of our own: a cold start, as on the bare GPU machine, and no user cache touched
  export KD_HARNESS_CACHE=$work/cache KD_HARNESS_TEACHERS=$work/cards PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
  trap finish EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT

  echo "== gpu_check ($mode): budget ${budget}s, work folder $work, results to $out =="
  if (( ! smoke )); then
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: run with --smoke on a CPU")'
  fi
  prepare_teachers
  step e2e "$full_reserve" bash -c '"$0" -m harness run "$1" --results-dir "$2" "${@:3}" && "$0" -m harness verify --results-dir "$2"' \
    "$PY" "$RECIPE" "$work/e2e" --set training.seed=0 "${quick[@]}"
  step throughput_minilm "$full_reserve" "$PY" bench/kd_throughput.py --pair minilm "${tp_minilm[@]}" --out "$work/kd_throughput.json"
  step throughput_mpnet "$full_reserve" "$PY" bench/kd_throughput.py --pair mpnet "${tp_mpnet[@]}" --out "$work/kd_throughput.json"
  step cache_parity "$full_reserve" "$PY" bench/cache_parity.py "$RECIPE" --seeds "${parity_seeds[@]}" \
    --out "$work/cache_parity" "${quick[@]}"
  step full_sst2 0 "$PY" -m harness run "$RECIPE" --results-dir "$work/full_sst2" --no-tables \
    --set name=glue/sst2/kd/minilm3L_from_minilm/full "${full[@]}"
}

main "$@"
