#!/bin/bash
# Usage (from a checkout's root): results/cls_top_mrpc/run.sh new|old TEACHER_FOLDER
# new = this checkout (ad57412 or later); old = a clone at ae10f4a in ../kdray-old (git clone . ../kdray-old &&
# git -C ../kdray-old checkout ae10f4a). Started once each, at the same time, so each seed's two runs share the load.
code=$PWD; [ "$1" = old ] && code=$PWD/../kdray-old
for seed in 1 2 3; do
  (cd "$code" && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH="$code" python -m kdray train "$OLDPWD/results/cls_top_mrpc/run.yaml" \
    --teacher "$2" --output-dir "runs/cls_top_mrpc/$1-s$seed" --set train.seed=$seed --set data.dir="$OLDPWD/../shared/glue")
done
