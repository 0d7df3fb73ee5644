#!/usr/bin/env bash
# The whole recipe of one 32x32 model: data, training, guidance tuning, solver table, export.
#
#   bash benchmarks/models/family32.sh FAMILY RUNS [STAGE...]
#
# FAMILY: poisson, helmholtz, burgers or navier_stokes; RUNS: a work folder (data and
# checkpoints, not in git).  STAGE: any of data train tune fno table export (default: all,
# in that order); each stage is one or a few commands, written here so that the model card
# and the results under benchmarks/results/ name what was run.  Run from the repository
# root with pdediff installed.  Costs on the 2-core CPU are in benchmarks/models/README.md.
# TABLE_SAMPLES: test samples of the table (default 100; the first tables had 20).
# The sweeps keep their measured points (--resume), so the tune stage only runs new ones.
# TABLE_EXTRA: more options of solver_table.py (e.g. "--rows pdediff joint classical" first,
# the 2000-step diffusionpde rows later: the table's --resume keeps the parts done).
set -euo pipefail

F=${1:?family}
RUNS=${2:?work folder}
shift 2
STAGES=${*:-data train tune fno table export}
NAME=${F}32
CKPT=$RUNS/${NAME}_ckpt
TRAIN_N=5000
case $F in
  burgers) TRAIN_N=4000 ;;
  navier_stokes) TRAIN_N=3000 ;;  # 0.35 s a sample on one core
esac
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# FNO baselines (fno stage), one per task and sensor setting, read by the table stage
FNO_DIR=$RUNS/${NAME}_fno
FNO="--fno-forward $FNO_DIR/forward_{sensors} --fno-inverse $FNO_DIR/inverse_{sensors}"

# Tasks and the guidance grid per family (validation samples only).  The Dirichlet families
# and Navier-Stokes sample their coefficient and take the solution from the differentiable
# solver (the pdediff preset); Burgers' only field is the solution: the joint task.
# The 2000-step DiffusionPDE preset (one member, as released: about 50 s a sample on one
# core at 32^2) runs on the first DP_SAMPLES test samples where TUNE_DP tunes its weights
# (2 validation samples per point); the families without TUNE_DP do not run it yet.
DP_SAMPLES=0
TUNE_DP=""
case $F in
  poisson|helmholtz)
    TASKS="inverse forward"
    # data consistency at every step (the weight then only names the preset's default);
    # the step correction alone overshoots at weights >= 100 (a first sweep, 300-3000
    # without consistency steps: 570-5500 % error of a)
    TUNE_INVERSE="--weights 1000 --grid consistency_steps=20,40 --set consistency_lr=0.05"
    # forward: scored at 500 and 31 (3 %) sensors.  Data consistency at every step pins the
    # sensor pixels and nothing spreads them at 3 % (96 % error on validation); the step
    # correction above consistency_sigma_max spreads them through the network, data
    # consistency below it fits them (1000: at every step, the first tables' setting)
    TUNE_FORWARD="--points 500 31 --weights 30 100 300 --grid consistency_sigma_max=0.03,0.1,1000 --set consistency_steps=40 --set consistency_lr=0.05"
    # DiffusionPDE preset: poisson32's first sweep (obs 0.1, 1, 10 x pde 1, 10, 100) put the
    # best at pde_weight 1 (its released zeta_pde 100 overshoots on these models: 218 %
    # forward), its second (below) found 0.1-1 alike; Helmholtz sweeps obs at pde 1
    TUNE_DP="--weights 1 3 10 --grid pde_weight=0.1,0.3,1"
    [[ $F == helmholtz ]] && TUNE_DP="--weights 1 3 10 --set pde_weight=1"
    DP_SAMPLES=20
    TABLE="--baseline-options-json {\"interp-solve\":{\"method\":\"linear\"}}" ;;
  navier_stokes)
    TASKS="inverse forward"
    # the inverse step costs a flow map and its gradient per Adam step: few of them
    TUNE_INVERSE="--weights 3 30 --grid consistency_steps=0,5 --set consistency_lr=0.05"
    # forward: as Poisson's, scored at 500 and 31 sensors (a first sweep at 500, weight 10
    # with consistency_steps 0 or 40 at every step, chose 40: 83 % error at 3 %)
    TUNE_FORWARD="--points 500 31 --weights 10 30 100 --grid consistency_sigma_max=0.03,0.1,1000 --set consistency_steps=40 --set consistency_lr=0.05"
    # DiffusionPDE preset: the observation weight at pde_weight 1 (Poisson's and Burgers'
    # finding); about 2 minutes a sample (its PDE term runs the flow map at every step).  A
    # first grid of 1 3 10 had its best at 1, its edge, for both tasks
    TUNE_DP="--weights 0.1 0.3 1 3 10 --set pde_weight=1"
    DP_SAMPLES=20
    # pde-fit: 2-7 s a sample through the flow map (the first tables ran it on 10 samples)
    TABLE="--baseline-options-json {\"pde-fit\":{\"reg\":\"tikhonov\"},\"interp-solve\":{\"method\":\"linear\"}}" ;;
  burgers)
    TASKS="joint"
    # as the forward task of the others: scored at 500 and 31 sensors, the step correction
    # above consistency_sigma_max (a first sweep at 500 sensors, weights 10 and 100 with
    # consistency_steps 0 or 20 at every step, chose 20 at every step: 85 % error at 3 %)
    TUNE_JOINT="--points 500 31 --weights 10 30 100 --grid consistency_sigma_max=0.03,0.1,1000 --set consistency_steps=20 --set consistency_lr=0.05"
    # DiffusionPDE preset: the observation weight at pde_weight 1 (Poisson's finding); a
    # first grid of 1 3 10 had its best at 1, its edge
    TUNE_DP="--weights 0.1 0.3 1 3 10 --set pde_weight=1"
    DP_SAMPLES=20
    TABLE="--tasks joint"
    FNO="" ;;  # no coefficient field to map from or to
  *) echo "unknown family $F" >&2; exit 2 ;;
esac

for stage in $STAGES; do
  case $stage in
    data)
      pdediff generate "$F" --n $TRAIN_N --resolution 32 --seed 1000 --quiet -o "$RUNS/${NAME}_train.nc"
      pdediff generate "$F" --n 100 --resolution 32 --seed 7 --quiet -o "$RUNS/${NAME}_test.nc"
      pdediff generate "$F" --n 8 --resolution 32 --seed 8 --quiet -o "$RUNS/${NAME}_val.nc" ;;
    train)
      pdediff train --config "benchmarks/models/${NAME}.toml" --data "$RUNS/${NAME}_train.nc" \
        --out "$CKPT" --quiet ;;
    tune)
      for task in $TASKS; do
        grid_var="TUNE_${task^^}"
        # shellcheck disable=SC2086
        python benchmarks/tune_guidance.py --model "$CKPT" --data "$RUNS/${NAME}_val.nc" \
          --tasks "$task" --samples 3 --members 8 --threads 1 ${!grid_var} --resume \
          --out "benchmarks/results/tune_guidance_${NAME}_${task}.json"
        # the joint preset (both fields sampled, observation + PDE residual terms): its
        # default weight (1000) overshoots on these models
        python benchmarks/tune_guidance.py --model "$CKPT" --data "$RUNS/${NAME}_val.nc" \
          --tasks "$task" --samples 3 --members 8 --threads 1 --preset joint --weights 1 10 30 100 \
          --resume --out "benchmarks/results/tune_guidance_${NAME}_${task}_joint.json"
        if [[ -n $TUNE_DP ]]; then
          # shellcheck disable=SC2086
          python benchmarks/tune_guidance.py --model "$CKPT" --data "$RUNS/${NAME}_val.nc" \
            --tasks "$task" --samples 2 --members 1 --threads 1 --preset diffusionpde $TUNE_DP \
            --resume --out "benchmarks/results/tune_guidance_${NAME}_${task}_diffusionpde.json"
        fi
      done ;;
    fno)
      if [[ -n $FNO ]]; then
        python benchmarks/fno_models.py --train "$RUNS/${NAME}_train.nc" --save "$FNO_DIR" \
          --threads 1 --out "benchmarks/results/fno_models_${NAME}.json"
      fi ;;
    table)
      # shellcheck disable=SC2086
      python benchmarks/solver_table.py --model "$CKPT" --data "$RUNS/${NAME}_test.nc" \
        --family "$F" --samples "${TABLE_SAMPLES:-100}" --members 8 --threads 1 --resume \
        --dp-samples "$DP_SAMPLES" --dp-members 1 $TABLE $FNO ${TABLE_EXTRA:-} \
        --out "benchmarks/results/solver_table_${NAME}.json" ;;
    export)
      metrics=()
      for t in benchmarks/results/solver_table_${NAME}/*_p500_pdediff.json; do
        metrics+=(--metrics "$t")
      done
      pdediff export "$CKPT" "pdediff/models/$NAME" --name "$NAME" --overwrite \
        --data-recipe "pdediff generate $F --n $TRAIN_N --resolution 32 --seed 1000 -o ${NAME}_train.nc" \
        "${metrics[@]}" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
