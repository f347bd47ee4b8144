import pytest


@pytest.fixture(autouse=True)
def _isolated_datasets(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's ~/.minari or logs to wandb servers."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path_factory.mktemp("minari")))
    monkeypatch.setenv("WANDB_MODE", "disabled")
