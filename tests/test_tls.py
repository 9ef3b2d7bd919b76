"""The shipped TLS listener variant, with certificates made for the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.broker import broker_users
from testkit.support import TEST_ACL, make_config, retained, wait_until

from publisher import StatusPublisher
from yl_status.dev_broker import DevBroker

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_broker(tmp_path: Path, certs: Path) -> Iterator[DevBroker]:
    broker = DevBroker(tmp_path / "tls-broker", users=broker_users(), extra_acl=TEST_ACL,
                       tls_certs=certs).start()
    yield broker
    broker.stop()


def test_a_node_reports_over_the_tls_listener(tls_broker: DevBroker, certs: Path) -> None:
    assert tls_broker.tls_port is not None
    config = make_config(tls_broker, mqtt={"port": tls_broker.tls_port,
                                           "tls": {"ca_file": str(certs / "ca.crt")}})
    publisher = StatusPublisher(config).start()
    try:
        wait_until(lambda: publisher.connected, what="connected over TLS")
        wait_until(lambda: (retained(tls_broker.host, tls_broker.port,
                                     "yl/ar/nodes/node-1/state") or {}).get("state") == "ready",
                   what="ready seen on the plain listener")
    finally:
        publisher.stop()


def test_a_broker_certificate_from_another_ca_is_refused(tls_broker: DevBroker,
                                                         certs: Path) -> None:
    assert tls_broker.tls_port is not None
    errors: list[str] = []
    config = make_config(tls_broker, mqtt={"port": tls_broker.tls_port,
                                           "tls": {"ca_file": str(certs / "other-ca.crt")}})
    publisher = StatusPublisher(config, on_error=errors.append).start()
    try:
        wait_until(lambda: errors, what="a refused connection")
        assert "CERTIFICATE_VERIFY_FAILED" in errors[0] or "certificate verify" in errors[0]
        assert not publisher.connected
    finally:
        publisher.stop()
