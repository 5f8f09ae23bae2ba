"""Shared fixtures."""
from __future__ import annotations

import pytest
import torch

from tests.golden import TOKENIZER_DIR, load_case


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    # The golden files were made with one intra-op thread; results are then reproducible.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def text_encoder_dir(tmp_path_factory):
    """A one-layer RoBERTa (hidden 768, as the resizer needs) and the golden tokenizer, saved with save_pretrained."""
    from models.text_encoder import load_tokenizer, text_encoder_from_config

    directory = tmp_path_factory.mktemp("text_encoder")
    torch.manual_seed(0)
    text_encoder_from_config(load_case("model_eval_r50.pt")["text_encoder_config"]).save_pretrained(directory)
    load_tokenizer(str(TOKENIZER_DIR)).save_pretrained(directory)
    return directory
