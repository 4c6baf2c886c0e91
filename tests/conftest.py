import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' models are tiny and gain nothing from intra-op threads; on a busy 2-core
    machine the thread pool's spinning makes them ~10x slower. Scripts started as subprocesses
    keep their own thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A tiny base model and an SFT model trained on it (seconds), shared by the smoke runs of the
    later stages (reward models, DPO, PRM, torchrun). Tests read them and write elsewhere."""
    import train_base
    import train_sft
    root = tmp_path_factory.mktemp("tiny_models")
    train_base.main(["--out", str(root / "base"), "--steps", "3", "--n_docs", "300", "--batch_size", "4",
                     "--log_every", "10"])
    train_sft.main(["--init", str(root / "base" / "ckpt"), "--out", str(root / "sft"), "--steps", "2",
                    "--n_train", "60", "--eval_per_family", "1", "--batch_size", "4", "--log_every", "10"])
    return {"base": str(root / "base" / "ckpt"), "sft": str(root / "sft" / "ckpt")}


@pytest.fixture(scope="session")
def sft(tiny_models):
    """The tiny SFT checkpoint's path (test_dist.py overrides it with the (base, sft) pair)."""
    return tiny_models["sft"]
