"""Shared pytest fixtures for speechbrain-mrl."""
import os
import pathlib
import socket

import pytest

SHARED_DATA_ENV = "MRL_SHARED_DATA"
TEST_DATA = pathlib.Path(__file__).parent / "data"


def pytest_addoption(parser):
    parser.addoption(
        "--shared-data",
        default=os.environ.get(SHARED_DATA_ENV),
        help=f"folder with speech_commands/ and librispeech_train_clean_100/ (or set ${SHARED_DATA_ENV})",
    )


@pytest.fixture(scope="session")
def shared_data(request):
    """Path to the real-speech folder; skips the test when it is not given."""
    path = request.config.getoption("--shared-data")
    if not path or not pathlib.Path(path, "speech_commands").is_dir():
        pytest.skip(
            f"real-speech data not found: pass --shared-data or set ${SHARED_DATA_ENV} "
            "to a folder holding speech_commands/"
        )
    return pathlib.Path(path)


@pytest.fixture(scope="session")
def shared_data_or_none(request):
    """The real-speech folder, or None (the test then makes synthetic voices)."""
    path = request.config.getoption("--shared-data")
    return pathlib.Path(path) if path and pathlib.Path(path, "speech_commands").is_dir() else None


@pytest.fixture(scope="session")
def test_data():
    """Folder of data files shipped with the tests (ReDimNet reference outputs)."""
    return TEST_DATA


@pytest.fixture
def no_network(monkeypatch):
    """HF offline mode and any socket connection raising."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
