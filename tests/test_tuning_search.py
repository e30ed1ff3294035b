"""The search strategies themselves (runner/tuning/search.py), on synthetic objectives: the very code a tuning job
asks for its next trial's values, driven here without containers so that enough seeded runs can be averaged."""

from __future__ import annotations

import statistics
from typing import Any

from runner.tuning.search import Search
from smlocal.core.tuning.lifecycle import SUCCEEDED, TrialRecord, TuningJobRecord

RANGES = {"ContinuousParameterRanges": [
    {"Name": "x", "MinValue": "-5", "MaxValue": "5", "ScalingType": "Linear"},
    {"Name": "y", "MinValue": "-5", "MaxValue": "5", "ScalingType": "Linear"}]}


def smooth(x: float, y: float) -> float:
    return (x - 1.2) ** 2 + 2 * (y + 0.7) ** 2


def job(strategy: str, seed: int, ranges: dict[str, Any] = RANGES, trials: list[TrialRecord] | None = None
        ) -> TuningJobRecord:
    request = {"HyperParameterTuningJobConfig": {
        "Strategy": strategy, "RandomSeed": seed, "ParameterRanges": ranges,
        "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "loss"},
        "ResourceLimits": {"MaxParallelTrainingJobs": 1}},
        "TrainingJobDefinition": {"StaticHyperParameters": {}}}
    return TuningJobRecord(id=1, name=f"{strategy}-{seed}", arn=f"arn:{strategy}-{seed}", account_id="1",
                           region="r", request=request, status="InProgress", failure_reason=None, creation_time=0,
                           last_modified_time=0, end_time=None, not_improving=0, convergence_time=None,
                           trials=trials or [])


def ended(number: int, tuned: dict[str, str], search_params: dict[str, Any], value: float) -> TrialRecord:
    return TrialRecord(id=number, number=number, training_job_name=f"t-{number}", training_job_arn=f"a-{number}",
                       definition_name=None, tuned=tuned, search_params=search_params, creation_time=0,
                       training_status="Completed", ended=True, failure_reason=None, training_start_time=0,
                       training_end_time=0, objective_status=SUCCEEDED, objective_value=value, early_stopped=False,
                       search_attrs={})


def run(strategy: str, seed: int, budget: int) -> list[TrialRecord]:
    search = Search(job(strategy, seed))
    done: list[TrialRecord] = []
    for number in range(1, budget + 1):
        proposal = search.propose(number)
        assert proposal is not None
        search.launched(number, proposal)
        trial = ended(number, proposal.tuned, proposal.search_params,
                      smooth(float(proposal.tuned["x"]), float(proposal.tuned["y"])))
        search.finish(trial)
        done.append(trial)
    return done


def test_bayesian_beats_random_on_a_smooth_objective_over_the_same_budget() -> None:
    # Seeded, so the comparison is the same on every run; averaged, so it does not hang on one lucky seed.
    seeds, budget = range(10), 30
    bayesian = [min(t.objective_value for t in run("Bayesian", s, budget)) for s in seeds]
    random_ = [min(t.objective_value for t in run("Random", s, budget)) for s in seeds]
    print(f"mean best over {len(seeds)} seeds, {budget} trials: Bayesian {statistics.fmean(bayesian):.4f}, "
          f"Random {statistics.fmean(random_):.4f}")
    assert statistics.fmean(bayesian) < statistics.fmean(random_) / 3
    assert statistics.median(bayesian) < statistics.median(random_) / 2


def test_random_seed_repeats_a_run_and_a_restart_goes_on_with_the_same_values() -> None:
    first = [t.tuned for t in run("Random", 42, 6)]
    assert [t.tuned for t in run("Random", 42, 6)] == first
    assert [t.tuned for t in run("Random", 43, 6)] != first
    # A search rebuilt from the first three stored trials (a restarted server) proposes what the first run did.
    three = run("Random", 42, 3)
    rebuilt = Search(job("Random", 42, trials=three))
    assert [rebuilt.propose(n).tuned for n in (4, 5, 6)] == first[3:]


def test_scalings_keep_values_in_range_and_spread_them_as_documented() -> None:
    ranges = {"ContinuousParameterRanges": [
        {"Name": "lr", "MinValue": "0.0001", "MaxValue": "1", "ScalingType": "Logarithmic"},
        {"Name": "momentum", "MinValue": "0.9", "MaxValue": "0.9999", "ScalingType": "ReverseLogarithmic"}],
        "IntegerParameterRanges": [{"Name": "layers", "MinValue": "1", "MaxValue": "8", "ScalingType": "Auto"}],
        "CategoricalParameterRanges": [{"Name": "act", "Values": ["relu", "tanh"]}]}
    search = Search(job("Random", 7, ranges))
    values = [search.propose(n).tuned for n in range(1, 401)]
    lr = [float(v["lr"]) for v in values]
    momentum = [float(v["momentum"]) for v in values]
    assert all(0.0001 <= v <= 1 for v in lr) and all(0.9 <= v <= 0.9999 for v in momentum)
    assert {v["layers"] for v in values} == {str(i) for i in range(1, 9)}
    assert {v["act"] for v in values} == {"relu", "tanh"}
    # Logarithmic: about as many values in each decade; ReverseLogarithmic: as many within 0.999..0.9999 as
    # within 0.9..0.99.
    decades = [sum(10 ** -k <= v < 10 ** -(k - 1) for v in lr) for k in (4, 3, 2, 1)]
    assert min(decades) > 60, decades
    near_one = sum(v >= 0.999 for v in momentum)
    far = sum(v < 0.99 for v in momentum)
    assert 0.6 < near_one / far < 1.6, (near_one, far)
