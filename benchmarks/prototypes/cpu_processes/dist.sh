#!/bin/bash
# usage: dist.sh OUTPREFIX [extra bench args]; two processes, one core + one XLA thread each
HERE=$(cd "$(dirname "$0")" && pwd)
P=${PYTHON:-$HERE/../../../.venv/bin/python}
PORT=$((20000 + RANDOM % 20000))
pfx=$1; shift
export XLA_FLAGS="${DIST_XLA_FLAGS:---xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1}"
taskset -c 0 $P $HERE/bench.py --mode dist --nproc 2 --pid 0 --port $PORT --out ${pfx}.npz "$@" > ${pfx}_p0.log 2>&1 &
a=$!
taskset -c 1 $P $HERE/bench.py --mode dist --nproc 2 --pid 1 --port $PORT "$@" > ${pfx}_p1.log 2>&1 &
b=$!
wait $a; ra=$?; wait $b; rb=$?
echo "rc $ra $rb"
