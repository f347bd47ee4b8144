import pytest

from orl.envs import MT50_TASKS, TASK_DESCRIPTIONS, describe


def test_all_tasks_described_once_and_distinctly():
    assert set(TASK_DESCRIPTIONS) == set(MT50_TASKS)
    assert len(set(TASK_DESCRIPTIONS.values())) == 50


def test_descriptions_are_single_sentences():
    for task, text in TASK_DESCRIPTIONS.items():
        assert text[0].isupper() and text.endswith("."), task
        assert text.count(".") == 1, task


def test_describe_accepts_short_names_and_rejects_unknown():
    assert describe("reach") == describe("reach-v3") == TASK_DESCRIPTIONS["reach-v3"]
    with pytest.raises(ValueError, match=r"'hamer'.*hammer-v3"):
        describe("hamer")
