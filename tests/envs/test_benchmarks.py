import pytest
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

from orl.envs import BENCHMARKS, MT10, MT50_TASKS, OCW10, get_benchmark, resolve_tasks
from orl.envs.benchmarks import OCW10_SHUFFLES


def test_mt50_is_sorted_metaworld_v3():
    assert list(MT50_TASKS) == sorted(ALL_V3_ENVIRONMENTS)


def test_every_benchmark_task_exists():
    for name, tasks in BENCHMARKS.items():
        assert tasks, name
        assert set(tasks) <= set(ALL_V3_ENVIRONMENTS), name


def test_benchmark_contents():
    assert get_benchmark("MT10") == [
        "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
        "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3",
        "window-close-v3",
    ]
    assert get_benchmark("MT30") == list(MT50_TASKS[:30])
    assert get_benchmark("MT50") == list(MT50_TASKS)
    assert len(set(get_benchmark("MT50"))) == 50
    assert get_benchmark("OCW10")[0] == "hammer-v3" and get_benchmark("OCW10")[-1] == (
        "peg-unplug-side-v3"
    )
    assert len(set(OCW10)) == 10
    assert get_benchmark("OCW20") == list(OCW10) * 2


def test_shuffles_are_the_released_compoformer_orders():
    for k, order in enumerate(OCW10_SHUFFLES, start=1):
        assert get_benchmark(f"OCW10-shuffle{k}") == list(order)
        assert sorted(order) == sorted(OCW10) and list(order) != list(OCW10)
    assert len({tuple(o) for o in OCW10_SHUFFLES}) == 3
    # cw10_task_list_seed1 of the CompoFormer code starts push, window-close, peg-unplug-side
    assert get_benchmark("OCW10-shuffle1")[:3] == ["push-v3", "window-close-v3", "peg-unplug-side-v3"]
    assert get_benchmark("OCW10-shuffle3")[-1] == "push-back-v3"


def test_lookup_is_case_insensitive():
    assert get_benchmark("mt10") == get_benchmark("MT10")
    assert get_benchmark("ocw10-SHUFFLE2") == get_benchmark("OCW10-shuffle2")


def test_unknown_benchmark_suggests_close_match():
    with pytest.raises(ValueError, match=r"'MT11'.*MT10.*OCW20"):
        get_benchmark("MT11")


def test_resolve_tasks_forms():
    assert resolve_tasks("MT10") == list(MT10)
    assert resolve_tasks("reach") == ["reach-v3"]
    assert resolve_tasks("reach, push-v3,mt10") == ["reach-v3", "push-v3", *MT10]
    assert resolve_tasks(["ocw10", "hammer"]) == [*OCW10, "hammer-v3"]
    assert len(resolve_tasks("OCW20")) == 20


def test_resolve_tasks_unknown_names_input_and_suggests():
    with pytest.raises(ValueError, match=r"'reech'.*reach-v3"):
        resolve_tasks("push,reech")
    with pytest.raises(ValueError, match=r"'MT11'.*MT10"):
        resolve_tasks(["MT11"])
    with pytest.raises(ValueError):
        resolve_tasks(" , ")
