"""The one home for starting runs: the launch command, its supervision, per-rank logs, and the record of a
run that died.

Launchers: none (np=1), horovodrun (Gloo), mpirun, srun (inside a SLURM allocation). Sweeps, the transfer
study, the demo and the cluster array tasks all start `bratsbench train` through `launch_train`, so they share
one log layout (RunDir.logs) and one settling rule: a run is "ok" only when its process exited 0 AND its record
says ok; anything else is recorded "failed" (or "interrupted") with the exit code, a reason and the log tail.

Supervision: the launcher runs in its own session; its whole process tree dies on timeout, on a lost rank
(a rank gone while the job still runs RANK_GRACE_S: a rank killed with -9 leaves the others blocked in a
collective), or on Ctrl-C. Horovod's ranks sit in other sessions than the launcher, so the tree is walked with
psutil as well as the process group killed. In a cluster array task, stop signals are passed on to the ranks
instead (forward.py): they checkpoint at a step they agree on and the run is settled "preempted".
"""

from harness.launch.commands import (LAUNCHERS, LOCAL_LAUNCHERS, allocation_hosts, bratsbench_command, launch_command,
                                     launch_env, launcher_for)
from harness.launch.forward import FORWARDED, Forwarder, deliver
from harness.launch.run import launch_train, run_logged, sigterm_as_interrupt, train_args
from harness.launch.settle import (TAIL_LINES, blank_record, describe, fail_unstarted, file_tail, log_tail, preempted_line,
                                   settle)
from harness.launch.supervise import KILL_WAIT_S, RANK_GRACE_S, Outcome, is_rank_process, kill_tree, supervise
from harness.launch.workers import free_ports, run_mwms_workers

__all__ = [
    "FORWARDED", "Forwarder", "deliver", "preempted_line",
    "KILL_WAIT_S", "LAUNCHERS", "LOCAL_LAUNCHERS", "RANK_GRACE_S", "TAIL_LINES", "Outcome", "allocation_hosts",
    "blank_record", "bratsbench_command", "describe", "fail_unstarted", "file_tail", "free_ports", "is_rank_process",
    "kill_tree", "launch_command", "launch_env", "launch_train", "launcher_for", "log_tail", "run_logged",
    "run_mwms_workers", "settle", "sigterm_as_interrupt", "supervise", "train_args",
]
