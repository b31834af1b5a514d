"""The console's bookkeeping (gateway/console/activity.py): bounded, bucketed, per worker."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pydantic_settings import CliApp

from llamagrid.fleet.config import load_fleet_config
from llamagrid.gateway.console.activity import BUCKET_S, BUCKETS, RECENT, Activity, RequestRecord
from llamagrid.gateway.settings import GatewaySettings
from llamagrid.supervisor.plan import Plan, fleet_plan, single_model_plan
from llamagrid.supervisor.settings import ServeSettings

START = 1_000_000.0  # a multiple of BUCKET_S


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def record(when: float, **fields: object) -> RequestRecord:
    base = RequestRecord(
        time=when,
        method="POST",
        route="/v1/chat/completions",
        model="m",
        status=200,
        worker="w1:1",
        reason="round_robin:turn",
        attempts=1,
        ttft_s=0.2,
        duration_s=1.0,
        prompt_tokens=10,
        cached_tokens=4,
        completion_tokens=20,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_the_recent_requests_keep_only_the_newest() -> None:
    activity = Activity(Clock())
    for i in range(RECENT + 10):
        activity.record(record(START, completion_tokens=i))
    assert len(activity.recent) == RECENT
    assert activity.recent[0].completion_tokens == 10
    assert activity.recent[-1].completion_tokens == RECENT + 9


def test_requests_fall_into_buckets_and_empty_intervals_are_filled() -> None:
    clock = Clock()
    activity = Activity(clock)
    activity.record(record(START + 1))
    activity.record(record(START + 2, ttft_s=0.4, completion_tokens=30))
    activity.record(record(START + 2 * BUCKET_S + 1, ttft_s=None, status=429))
    clock.now = START + 3 * BUCKET_S
    series = activity.series()
    assert len(series) == BUCKETS
    assert [b.start for b in series[-4:]] == [int(START) + k * BUCKET_S for k in range(4)]
    first, empty, third, current = series[-4:]
    assert (first.requests, first.completion_tokens, first.ttft_count) == (2, 50, 2)
    assert abs(first.ttft_sum_s - 0.6) < 1e-9
    assert (empty.requests, current.requests) == (0, 0)
    assert (third.requests, third.rate_limited, third.ttft_count) == (1, 1, 0)


def test_the_series_forgets_what_is_older_than_its_window() -> None:
    clock = Clock()
    activity = Activity(clock)
    for k in range(BUCKETS + 30):
        activity.record(record(START + k * BUCKET_S))
    clock.now = START + (BUCKETS + 29) * BUCKET_S
    series = activity.series()
    assert len(series) == BUCKETS and all(bucket.requests == 1 for bucket in series)
    assert series[0].start == int(START) + 30 * BUCKET_S


def test_answers_that_name_no_model_count_only_their_status() -> None:
    activity = Activity(Clock())
    for status in (200, 429, 503, 401):
        activity.answered(status)
    (bucket,) = [b for b in activity.series() if b.start == int(START)]
    assert (bucket.requests, bucket.rate_limited, bucket.errors) == (0, 1, 1)
    assert not activity.recent


def test_prompt_and_cached_tokens_add_up_per_worker_until_it_leaves() -> None:
    activity = Activity(Clock())
    activity.record(record(START))
    activity.record(record(START, prompt_tokens=30, cached_tokens=26))
    activity.record(record(START, worker="w2:1", prompt_tokens=5, cached_tokens=0))
    activity.record(record(START, worker="", prompt_tokens=5))  # no worker chosen: not counted
    assert (activity.tokens["w1:1"].prompt, activity.tokens["w1:1"].cached) == (40, 30)
    assert activity.tokens.keys() == {"w1:1", "w2:1"}
    activity.forget_except({"w2:1"})
    assert activity.tokens.keys() == {"w2:1"}


def test_the_console_is_on_by_default_and_off_with_a_flag() -> None:
    assert GatewaySettings().console is True
    assert CliApp.run(GatewaySettings, cli_args=["--no-console"]).console is False


def test_serve_passes_no_console_to_its_gateway_alone_and_over_a_fleet_file(
    tmp_path: Path,
) -> None:
    def gateway_console(plan: Plan) -> bool:
        argv = next(p for p in plan.processes if p.role == "gateway").argv
        flags = [a for a in argv[3:] if a in ("--console", "--no-console")]
        return CliApp.run(GatewaySettings, cli_args=flags).console

    assert gateway_console(single_model_plan(ServeSettings())) is True
    assert gateway_console(single_model_plan(ServeSettings(console=False))) is False
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("gateway:\n  console: true\nmodels:\n  - alias: m\n")
    config = load_fleet_config(fleet)
    off = ServeSettings(console=False)
    assert gateway_console(fleet_plan(config, off, cores=2, python="py")) is False
    assert gateway_console(fleet_plan(config, ServeSettings(), cores=2, python="py")) is True
