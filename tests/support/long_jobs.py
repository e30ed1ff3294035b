"""What the long-job tests share: an algorithm that resumes from its checkpoint folder."""

from __future__ import annotations

CKPT = "/opt/ml/checkpoints"


def resumable(later_runs: str = "") -> str:
    """A busybox script: each run adds its own piece of work to the checkpoint folder and puts all the work so
    far in the model; the first run then trains on until SIGTERM (an interruption, a stop), a later one runs
    `later_runs` and ends."""
    return f"""
n=$(ls {CKPT} | grep -c '^run-')
n=$((n+1))
echo "work of run $n" > {CKPT}/run-$n
cat {CKPT}/run-* > /opt/ml/model/work.txt
if [ $n -eq 1 ]; then
  trap 'exit 0' TERM
  i=0; while [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
else
  {later_runs or ":"}
fi
"""
