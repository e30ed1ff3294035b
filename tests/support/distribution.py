"""How `make test` deals the suite out to pytest-xdist's workers: whole modules, slowest first, and the modules
that share engine-wide state together on one worker.

Most of a test's time is spent waiting on containers, servers and subprocesses, so several workers on two cores
pay, but only while no two of them touch the same engine-wide thing at once:

- The swarm tests share one swarm on the engine (tests/support/swarm.py's lease). A module that joins a second
  engine to it as a worker (test_swarm_two_nodes, test_swarm_nodes) lets the manager place another module's
  services on that node, and takes the node away again under them ("task ... orphaned"). test_engine_restart
  starts and stops a dockerd of its own in a network namespace, the same machinery. They run on one worker,
  one module after another.

Everything else runs side by side: each module's servers have their own data dir, ports and job networks (from
the job range, never the engine's default pools), and the tests look only at what their own server made.
"""

from __future__ import annotations

from typing import Any

import pytest

# Module -> the group it runs in (one worker, one after another).
RUN_TOGETHER = {
    "test_swarm_jobs": "second-engines", "test_swarm_two_nodes": "second-engines",
    "test_swarm_nodes": "second-engines", "test_engine_restart": "second-engines",
}

# Measured with `pytest --junitxml` (2026-12-07, four workers), slowest first, a group where its slowest member
# would be; modules not named here follow in collection order. A module missing from the list only makes the
# run's tail longer: a long module dealt out last runs alone at the end.
SLOWEST_FIRST = (
    "second-engines", "test_tuning_jobs", "test_runner_phases", "test_agent", "test_long_jobs", "test_workshop",
    "test_sdk_script_mode", "test_simulated_backend", "test_sdk_v2", "test_runner_jobs", "test_shell",
    "test_store_faults", "test_fastfile_jobs", "test_job_networks", "test_sdk_tuning", "test_pipe_jobs",
    "test_packaging", "test_runner_multihost", "test_cli_views", "test_store_compat",
)


def unit_of(module: str) -> str:
    """The work unit a module belongs to: its group, or itself."""
    return RUN_TOGETHER.get(module, module)


def slowest_first(items: list[pytest.Item]) -> None:
    """Sort the collected tests (in place, stably) so the slowest units come first, each unit's tests together."""
    rank = {unit: n for n, unit in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: (rank.get(unit_of(item.path.stem), len(rank)), unit_of(item.path.stem)))


def module_of(nodeid: str) -> str:
    """`tests/test_x.py::test_y[z]` -> `test_x`."""
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's file scheduling, with the modules of a group in one work unit."""
    from xdist.scheduler import LoadFileScheduling

    class GroupedFileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = module_of(nodeid)
            return unit_of(module) if module in RUN_TOGETHER else super()._split_scope(nodeid)

    return GroupedFileScheduling(config, log)
