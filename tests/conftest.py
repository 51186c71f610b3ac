"""Test session settings (nothing may reach a model hub) and the fixtures the test modules share.

* ``tiny_ckpt`` (session): one default tiny SD 1.x checkpoint, ``tiny_checkpoint(<tmp>/tiny.safetensors)``.
* ``make_engine`` (session): ``make_engine(path, precision="full", **options)`` -> a CPU ``Engine`` with
  ``path`` loaded (``tests.helpers.make_engine``).
* ``engine`` (module): an fp32 CPU engine with ``tiny_ckpt`` loaded, one per test module. A module that needs
  another engine (another checkpoint, an embeddings folder, another precision) defines its own ``engine``
  with ``make_engine``.
* ``app_server`` (module): ``app_server(*flags, data=folder, auth=None, wait_model=None, **extra)`` starts
  ``python app.py *flags --data-dir folder`` and returns a ``tests.app_server.AppServer`` (base URL, port, log,
  process, a ``requests.Session`` with the optional basic ``auth``); ``wait_model`` seconds to wait for the
  model. Every server started is stopped when the module's tests are done.
"""

import contextlib
import os

import pytest

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
    os.environ[_name] = "1"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from tests.tiny import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def make_engine():
    from tests.helpers import make_engine

    return make_engine


@pytest.fixture(scope="module")
def engine(make_engine, tiny_ckpt):
    return make_engine(tiny_ckpt)


@pytest.fixture(scope="module")
def app_server():
    from tests.app_server import serve

    with contextlib.ExitStack() as servers:
        def start(*flags, data, auth=None, wait_model=None, **extra):
            return servers.enter_context(serve(*flags, data=data, auth=auth, wait_model=wait_model, **extra))

        yield start
