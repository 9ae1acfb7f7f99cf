"""How `make test` shares the cores between pytest-xdist workers (tests/parallel.py): the order and the CPU lock."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from tests.parallel import cpu_turn, heavy_first


def _item(nodeid: str, *marks: str) -> SimpleNamespace:
    item = SimpleNamespace(nodeid=nodeid, keywords={mark: True for mark in marks})
    item.add_marker = lambda mark: item.keywords.__setitem__(mark.name, True)
    return item


def test_slurm_modules_then_modules_with_slow_tests_then_the_rest_in_collection_order():
    items = [_item("tests/test_a.py::x"), _item("tests/test_b.py::x"), _item("tests/test_b.py::y", "slow"),
             _item("tests/test_slurm_two.py::x"), _item("tests/test_c.py::x"), _item("tests/test_slurm.py::x"),
             _item("tests/test_a.py::z")]
    heavy_first(items)
    assert [i.nodeid for i in items] == ["tests/test_slurm_two.py::x", "tests/test_slurm.py::x", "tests/test_b.py::x",
                                         "tests/test_b.py::y", "tests/test_a.py::x", "tests/test_c.py::x",
                                         "tests/test_a.py::z"]
    assert [i.nodeid for i in items if "alone" in i.keywords] == ["tests/test_slurm_two.py::x", "tests/test_slurm.py::x"]


def _worker_config(tmp_path, name: str) -> SimpleNamespace:
    return SimpleNamespace(workerinput={"workerid": name}, option=SimpleNamespace(basetemp=str(tmp_path / name)))


def _enter_later(config, alone: bool) -> threading.Event:
    entered = threading.Event()

    def take() -> None:
        with cpu_turn(config, alone):
            entered.set()

    threading.Thread(target=take, daemon=True).start()
    return entered


def test_an_alone_test_waits_for_the_others_and_they_wait_for_it(tmp_path):
    gw0, gw1 = _worker_config(tmp_path, "gw0"), _worker_config(tmp_path, "gw1")
    with cpu_turn(gw0, alone=False):
        assert _enter_later(gw1, alone=False).wait(5)  # two ordinary tests side by side
        alone = _enter_later(gw1, alone=True)
        assert not alone.wait(0.5)  # waits for the test beside it
    assert alone.wait(5)
    with cpu_turn(gw0, alone=True):
        assert not _enter_later(gw1, alone=False).wait(0.5)


def test_outside_xdist_nothing_is_locked(tmp_path):
    plain = SimpleNamespace(option=SimpleNamespace(basetemp=None))
    with cpu_turn(plain, alone=True):
        assert _enter_later(plain, alone=True).wait(5)
    assert not list(tmp_path.iterdir())
