"""An OPC UA belt encoder's URL may carry ``USER:PASSWORD@``: the encoder logs in with it (as the OPC UA sink does)
and the password never reaches its name, an error, a log line or its fault reason (the scheduler's fault reason,
/api/state, MQTT faults, summary.json and the systemd status all quote that one). Sink URL errors (an unknown option,
a mistyped scheme, a bad port, an option given twice) quote the URL without its user information."""

from __future__ import annotations

import logging

import pytest

from fair_edge.errors import SinkError
from fair_edge.line import encoder_links
from fair_edge.line.sinks import opcua as opcua_sink
from line_servers import wait_for

PASSWORD = "S3cretPass"
URL = f"opcua://operator:{PASSWORD}@127.0.0.1:4840/ua?node=ns=2;s=BeltCount&poll_ms=1"


class FakeOpcUaClient:
    """asyncua's sync Client as the encoder uses it: a node whose reads succeed ``good_reads`` times, then fail."""

    made: list["FakeOpcUaClient"] = []
    good_reads = 1

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint, self.user, self.password = endpoint, "", ""
        FakeOpcUaClient.made.append(self)

    def set_user(self, user: str) -> None:
        self.user = user

    def set_password(self, password: str) -> None:
        self.password = password

    def connect(self) -> None:
        if len(FakeOpcUaClient.made) > 1:   # the reconnects after the link dropped
            raise OSError(f"connection refused by {self.endpoint}")

    def get_node(self, node_id: str):
        client = self

        class Node:
            def read_value(self) -> int:
                if FakeOpcUaClient.good_reads <= 0:
                    raise OSError(f"link to {client.endpoint} dropped")
                FakeOpcUaClient.good_reads -= 1
                return 100

        return Node()

    def disconnect(self) -> None:
        pass


@pytest.fixture
def fake_opcua(monkeypatch):
    FakeOpcUaClient.made, FakeOpcUaClient.good_reads = [], 1
    monkeypatch.setattr(opcua_sink, "opcua_client_class", lambda: FakeOpcUaClient)
    return FakeOpcUaClient


def test_an_opcua_encoder_logs_in_with_the_urls_user_and_never_shows_the_password(fake_opcua, caplog):
    """Was: name and endpoint 'opcua opc.tcp://operator:S3cretPass@127.0.0.1:4840/ua ...', quoted by every
    'read failed' warning and by fault_reason after the link dropped."""
    caplog.set_level(logging.DEBUG, logger="fair_edge")
    encoder = encoder_links.open_encoder(URL)
    assert PASSWORD not in encoder.name and "operator@" not in encoder.name
    assert encoder.name.startswith("opcua opc.tcp://127.0.0.1:4840/ua"), encoder.name
    with encoder:
        client = fake_opcua.made[0]
        assert (client.endpoint, client.user, client.password) == ("opc.tcp://127.0.0.1:4840/ua", "operator", PASSWORD)
        assert wait_for(lambda: encoder.fault_reason is not None and len(fake_opcua.made) > 1, 30)
        reason = encoder.fault_reason
    assert "link down" in reason and "127.0.0.1:4840" in reason and PASSWORD not in reason, reason
    assert "read failed" in caplog.text and PASSWORD not in caplog.text


def test_an_opcua_encoder_that_cannot_connect_says_so_without_the_password(fake_opcua):
    """Was: 'opcua opc.tcp://op:S3cretPass@127.0.0.1:4840/ua ns=2;s=BeltCount: connect failed' at start-up."""
    fake_opcua.made.append(None)   # every connect refused
    with pytest.raises(Exception) as failed:
        encoder_links.open_encoder(URL).start()
    assert "connect failed" in str(failed.value) and PASSWORD not in str(failed.value), failed.value


@pytest.mark.parametrize("url, says", [
    (URL + "&pol_ms=5", "unknown option 'pol_ms'"),
    (URL.replace("opcua://", "opcau://"), "unknown encoder scheme 'opcau'"),
    (URL + "&timeout_ms=soon", "timeout_ms: expected a finite number"),
    (URL + "&bits=64", "bits: expected one of 16 | 32"),
    (URL.replace(":4840", ":99999"), "expected a port number"),
    (URL + "&node=ns=2;s=Other", "option 'node' given twice"),
])
def test_sink_url_errors_quote_the_url_without_its_password(url, says):
    """Was: the raw URL, user and password included, at the head of each of these errors."""
    with pytest.raises(SinkError, match=says) as failed:
        encoder_links.open_encoder(url)
    assert PASSWORD not in str(failed.value) and "127.0.0.1" in str(failed.value), failed.value
