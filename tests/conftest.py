import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_datasets(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's ~/.minari or logs to wandb servers."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path_factory.mktemp("minari")))
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is fastest and does not crawl on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
