from __future__ import annotations

from gatekeeper.edge.in_flight import InFlightCap


def _never(_: str) -> bool:
    return False


def test_a_client_is_refused_past_its_cap_and_admitted_again_once_one_ends() -> None:
    cap = InFlightCap(2, _never)
    assert cap.admit("192.0.2.1")
    assert cap.admit("192.0.2.1")
    assert not cap.admit("192.0.2.1")
    assert cap.admit("192.0.2.2")  # another client has its own count
    cap.release("192.0.2.1")
    assert cap.admit("192.0.2.1")


def test_a_refused_request_is_not_counted() -> None:
    cap = InFlightCap(1, _never)
    assert cap.admit("192.0.2.1")
    for _ in range(5):
        assert not cap.admit("192.0.2.1")
    cap.release("192.0.2.1")
    assert cap.in_flight("192.0.2.1") == 0


def test_trusted_proxies_and_a_zero_cap_are_not_limited() -> None:
    cap = InFlightCap(1, lambda ip: ip == "10.0.0.1")
    assert all(cap.admit("10.0.0.1") for _ in range(10))
    assert cap.in_flight("10.0.0.1") == 0
    unlimited = InFlightCap(0, _never)
    assert all(unlimited.admit("192.0.2.1") for _ in range(10))


def test_no_entry_outlives_the_last_request_of_its_client() -> None:
    cap = InFlightCap(3, _never)
    for n in range(1000):
        ip = f"10.0.{n // 256}.{n % 256}"
        assert cap.admit(ip)
        cap.release(ip)
    assert cap._open == {}
