"""The state machine: both peers walk the same table in lockstep.

Every scenario drives a :class:`ServerConnection` and a
:class:`ClientConnection` together: whatever one side ``send``\\ s is fed to
the other, which must pull exactly that message back out, and after every
step both sides must agree on the state. The tables below cover each
authentication flow, the SSL/GSS encryption negotiation (including the
CVE-2021-23214 guard against bytes smuggled in before the TLS handshake),
every entry of ``TRANSITIONS``, and messages that are out of place: those
are a ``RemoteProtocolError`` when received, a ``LocalProtocolError`` when
sent, and either way the connection ends in ``ERROR``.
"""

from __future__ import annotations

import pytest

from steward_proxy.wire import (
    CONNECTION_CLOSED,
    NEED_DATA,
    TRANSITIONS,
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationKerberosV5,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSCMCredential,
    AuthenticationSSPI,
    BackendKeyData,
    CancelRequest,
    ClientConnection,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyInResponse,
    DataRow,
    ErrorResponse,
    GSSENCRequest,
    GSSResponse,
    LocalProtocolError,
    Message,
    NegotiateProtocolVersion,
    NoticeResponse,
    ParameterStatus,
    PasswordMessage,
    Query,
    ReadyForQuery,
    RemoteProtocolError,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    ServerConnection,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    State,
    Terminate,
    encode,
)

CLIENT, SERVER = "client", "server"
Step = tuple[str, Message]

STARTUP = StartupMessage({"user": "alice", "database": "orders"})
STARTUP_DONE: list[Step] = [
    (SERVER, AuthenticationOk()),
    (SERVER, ParameterStatus("server_version", "16.2")),
    (SERVER, ParameterStatus("client_encoding", "UTF8")),
    (SERVER, BackendKeyData(4242, 17)),
    (SERVER, ReadyForQuery("I")),
]


class Pair:
    """A server and a client connected back to back."""

    def __init__(self) -> None:
        self.server = ServerConnection()
        self.client = ClientConnection()
        self.states: list[State] = []

    def sides(self, who: str) -> tuple[ServerConnection | ClientConnection, ...]:
        return (self.client, self.server) if who == CLIENT else (self.server, self.client)

    def step(self, who: str, message: Message) -> None:
        sender, receiver = self.sides(who)
        receiver.receive_data(sender.send(message))
        assert receiver.next_event() == message
        assert receiver.next_event() is NEED_DATA
        assert receiver.pending == 0
        assert self.server.state is self.client.state, f"sides disagree after {message}"
        self.states.append(self.server.state)

    def play(self, steps: list[Step]) -> Pair:
        for who, message in steps:
            self.step(who, message)
        return self


# ---------------------------------------------------------------------------
# Full startups


FLOWS = [
    pytest.param([(CLIENT, STARTUP)], id="trust: the server accepts the startup packet at once"),
    pytest.param(
        [
            (CLIENT, STARTUP),
            (SERVER, AuthenticationCleartextPassword()),
            (CLIENT, PasswordMessage(b"secret")),
        ],
        id="cleartext: the server asks for a password and the client sends it",
    ),
    pytest.param(
        [
            (CLIENT, STARTUP),
            (SERVER, AuthenticationMD5Password(b"\x01\x02\x03\x04")),
            (CLIENT, PasswordMessage(b"md5" + b"a" * 32)),
        ],
        id="md5: the server sends a salt and the client a hashed password",
    ),
    pytest.param(
        [
            (CLIENT, STARTUP),
            (SERVER, AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"))),
            (CLIENT, SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=nonce")),
            (SERVER, AuthenticationSASLContinue(b"r=nonce+server,s=c2FsdA==,i=4096")),
            (CLIENT, SASLResponse(b"c=biws,r=nonce+server,p=proof")),
            (SERVER, AuthenticationSASLFinal(b"v=signature")),
        ],
        id="SCRAM: the client and server exchange SASL messages to a final one",
    ),
    pytest.param(
        [
            (CLIENT, STARTUP),
            (SERVER, AuthenticationGSS()),
            (CLIENT, GSSResponse(b"token-1")),
            (SERVER, AuthenticationGSSContinue(b"challenge")),
            (CLIENT, GSSResponse(b"token-2")),
        ],
        id="GSS: tokens go back and forth until the server is satisfied",
    ),
    pytest.param(
        [
            (CLIENT, STARTUP),
            (SERVER, AuthenticationSSPI()),
            (CLIENT, GSSResponse(b"sspi-token")),
        ],
        id="SSPI: the client answers with a GSS response",
    ),
    pytest.param(
        [
            (CLIENT, SSLRequest()),
            (SERVER, SSLResponse(False)),
            (CLIENT, STARTUP),
        ],
        id="the server refuses SSL and the client starts up in plain text",
    ),
    pytest.param(
        [
            (CLIENT, SSLRequest()),
            (SERVER, SSLResponse(True)),
            (CLIENT, STARTUP),
        ],
        id="the server accepts SSL and the client starts up after the handshake",
    ),
    pytest.param(
        [
            (CLIENT, GSSENCRequest()),
            (SERVER, SSLResponse(False)),
            (CLIENT, SSLRequest()),
            (SERVER, SSLResponse(True)),
            (CLIENT, STARTUP),
        ],
        id="the server refuses GSS encryption, then accepts SSL",
    ),
    pytest.param(
        [
            (CLIENT, StartupMessage({"user": "alice", "_pq_.x": "1"}, 0x00030002)),
            (SERVER, NegotiateProtocolVersion(0, ("_pq_.x",))),
            (SERVER, NoticeResponse.build("01000", "hello", severity="NOTICE")),
            (SERVER, AuthenticationCleartextPassword()),
            (CLIENT, PasswordMessage(b"pw")),
            (SERVER, NoticeResponse.build("01000", "welcome", severity="NOTICE")),
        ],
        id="the server negotiates the minor version down and sends notices",
    ),
]


@pytest.mark.parametrize("steps", FLOWS)
def test_startup_flow_reaches_ready_on_both_sides(steps: list[Step]) -> None:
    pair = Pair().play(steps).play(STARTUP_DONE)
    assert pair.server.state is pair.client.state is State.READY


def test_scram_flow_passes_through_the_expected_states() -> None:
    pair = Pair().play(FLOWS[3].values[0]).play(STARTUP_DONE)
    assert pair.states == [
        State.AUTHENTICATING,
        State.SASL_INITIAL,
        State.AUTHENTICATING,
        State.SASL_CONTINUE,
        State.AUTHENTICATING,
        State.AUTHENTICATING,
        State.STARTING,
        State.STARTING,
        State.STARTING,
        State.STARTING,
        State.READY,
    ]


def test_ready_connection_passes_any_query_traffic_through() -> None:
    pair = Pair().play([(CLIENT, STARTUP), *STARTUP_DONE])
    pair.states.clear()
    pair.play(
        [
            (CLIENT, Query("copy t from stdin")),
            (SERVER, CopyInResponse(0, (0,))),
            (CLIENT, CopyData(b"1\n")),
            (CLIENT, CopyDone()),
            (SERVER, CommandComplete("COPY 1")),
            (SERVER, ReadyForQuery("I")),
            (CLIENT, Query("select 1")),
            (SERVER, RowDescription(())),
            (SERVER, DataRow((b"1",))),
            (SERVER, CopyData(b"out")),
            (SERVER, CopyDone()),
            (SERVER, ErrorResponse.build("42000", "oops")),
            (SERVER, ReadyForQuery("E")),
        ]
    )
    assert set(pair.states) == {State.READY}


def test_terminate_when_ready_closes_both_sides() -> None:
    pair = Pair().play([(CLIENT, STARTUP), *STARTUP_DONE, (CLIENT, Terminate())])
    assert pair.server.state is pair.client.state is State.CLOSED
    pair.server.receive_data(b"")
    assert pair.server.next_event() is CONNECTION_CLOSED
    with pytest.raises(LocalProtocolError):
        pair.client.send(Query("select 1"))
    assert pair.client.state is State.ERROR


def test_cancel_request_closes_the_connection() -> None:
    pair = Pair().play([(CLIENT, CancelRequest(4242, 17))])
    assert pair.server.state is State.CLOSED
    pair.server.receive_data(b"")
    assert pair.server.next_event() is CONNECTION_CLOSED


PRE_READY_STATES = {
    "startup": [],
    "authenticating": [(CLIENT, STARTUP)],
    "password": [(CLIENT, STARTUP), (SERVER, AuthenticationCleartextPassword())],
    "sasl-initial": [(CLIENT, STARTUP), (SERVER, AuthenticationSASL(("SCRAM-SHA-256",)))],
    "sasl-continue": [
        (CLIENT, STARTUP),
        (SERVER, AuthenticationSASL(("SCRAM-SHA-256",))),
        (CLIENT, SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=x")),
        (SERVER, AuthenticationSASLContinue(b"r=xy,s=AA==,i=1")),
    ],
    "gss": [(CLIENT, STARTUP), (SERVER, AuthenticationGSS())],
    "starting": [(CLIENT, STARTUP), (SERVER, AuthenticationOk())],
}
PREFIXES: dict[str, list[Step]] = {
    **PRE_READY_STATES,
    "ssl-negotiation": [(CLIENT, SSLRequest())],
    "ready": [(CLIENT, STARTUP), *STARTUP_DONE],
    "closed": [(CLIENT, STARTUP), (SERVER, ErrorResponse.build("28P01", "bad password"))],
}


@pytest.mark.parametrize("state", list(PRE_READY_STATES), ids=lambda s: f"an error in {s} closes")
def test_error_response_before_ready_closes_the_connection(state: str) -> None:
    error = ErrorResponse.build("28000", "no pg_hba.conf entry", severity="FATAL")
    pair = Pair().play([*PREFIXES[state], (SERVER, error)])
    assert pair.server.state is pair.client.state is State.CLOSED


@pytest.mark.parametrize(
    "state",
    [s for s in PRE_READY_STATES if s != "startup"],
    ids=lambda s: f"a client that gives up in {s} closes",
)
def test_terminate_before_ready_closes_the_connection(state: str) -> None:
    pair = Pair().play([*PREFIXES[state], (CLIENT, Terminate())])
    assert pair.server.state is pair.client.state is State.CLOSED


# ---------------------------------------------------------------------------
# Every entry of the table, sent by its side and received by the other

SAMPLES: dict[type[Message], Message] = {
    m.__class__: m
    for m in (
        SSLRequest(),
        GSSENCRequest(),
        SSLResponse(False),
        STARTUP,
        CancelRequest(1, 2),
        ErrorResponse.build("28P01", "password authentication failed", severity="FATAL"),
        NegotiateProtocolVersion(0),
        AuthenticationCleartextPassword(),
        AuthenticationMD5Password(b"salt"),
        PasswordMessage(b"pw"),
        AuthenticationSASL(("SCRAM-SHA-256",)),
        SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=x"),
        AuthenticationSASLContinue(b"r=xy"),
        SASLResponse(b"c=biws"),
        AuthenticationSASLFinal(b"v=x"),
        AuthenticationGSS(),
        AuthenticationSSPI(),
        AuthenticationGSSContinue(b"more"),
        GSSResponse(b"token"),
        AuthenticationOk(),
        ParameterStatus("a", "b"),
        BackendKeyData(1, 2),
        NoticeResponse.build("01000", "note"),
        ReadyForQuery("I"),
        Terminate(),
    )
}


@pytest.mark.parametrize(
    ("state", "cls"),
    list(TRANSITIONS),
    ids=[f"{s.value}: {c.__name__} leads to {n.value}" for (s, c), n in TRANSITIONS.items()],
)
def test_every_transition_in_the_table(state: State, cls: type[Message]) -> None:
    pair = Pair().play(PREFIXES[state.value])
    assert pair.server.state is state
    pair.step(CLIENT if cls.FRONTEND else SERVER, SAMPLES[cls])
    assert pair.server.state is TRANSITIONS[(state, cls)]


def test_the_table_reaches_every_state_but_error() -> None:
    reachable = {State.STARTUP} | set(TRANSITIONS.values()) | {State.READY}
    assert reachable == set(State) - {State.ERROR}


# ---------------------------------------------------------------------------
# Out-of-place messages

RECEIVED_AND_SENT = [
    pytest.param("startup", CLIENT, Query("select 1"), id="a client sends a Query before starting"),
    pytest.param(
        "startup", SERVER, AuthenticationOk(), id="a server says AuthenticationOk unprompted"
    ),
    pytest.param(
        "startup", SERVER, ReadyForQuery("I"), id="a server is ready before any startup packet"
    ),
    pytest.param(
        "ssl-negotiation",
        SERVER,
        AuthenticationOk(),
        id="a server answers an SSLRequest with AuthenticationOk",
    ),
    pytest.param(
        "authenticating",
        CLIENT,
        PasswordMessage(b"pw"),
        id="a client sends a password nobody asked for",
    ),
    pytest.param(
        "authenticating", CLIENT, Query("select 1"), id="a client sends a Query while logging in"
    ),
    pytest.param(
        "authenticating",
        SERVER,
        ReadyForQuery("I"),
        id="a server is ready before authentication succeeds",
    ),
    pytest.param(
        "authenticating",
        SERVER,
        ParameterStatus("a", "b"),
        id="a server reports a parameter before authentication succeeds",
    ),
    pytest.param(
        "authenticating",
        SERVER,
        AuthenticationKerberosV5(),
        id="a server asks for Kerberos V5, which the protocol no longer supports",
    ),
    pytest.param(
        "authenticating",
        SERVER,
        AuthenticationSCMCredential(),
        id="a server asks for an SCM credential, which needs a Unix socket",
    ),
    pytest.param(
        "password",
        SERVER,
        AuthenticationOk(),
        id="a server says AuthenticationOk while waiting for the password",
    ),
    pytest.param("password", CLIENT, Query("select 1"), id="a client sends a Query for a password"),
    pytest.param(
        "sasl-initial",
        SERVER,
        AuthenticationSASLFinal(b"v=x"),
        id="a server finishes SASL before the client starts it",
    ),
    pytest.param(
        "sasl-continue",
        SERVER,
        AuthenticationOk(),
        id="a server says AuthenticationOk while waiting for a SASL response",
    ),
    pytest.param(
        "gss", SERVER, AuthenticationOk(), id="a server says AuthenticationOk while awaiting GSS"
    ),
    pytest.param(
        "starting", CLIENT, Query("select 1"), id="a client sends a Query before ReadyForQuery"
    ),
    pytest.param("starting", SERVER, AuthenticationOk(), id="a server says AuthenticationOk twice"),
    pytest.param(
        "starting", SERVER, RowDescription(()), id="a server sends rows before ReadyForQuery"
    ),
    pytest.param(
        "closed", CLIENT, Query("select 1"), id="a client sends a Query after being refused"
    ),
    pytest.param("closed", CLIENT, Terminate(), id="a client says goodbye after being refused"),
    pytest.param(
        "closed", SERVER, ReadyForQuery("I"), id="a server is ready after refusing the client"
    ),
]

SENT_ONLY = [
    # The receiving side reads these bytes as something else (a partial frame, or
    # the 'p' message its state expects), so only the sending side can tell.
    pytest.param(
        "ssl-negotiation",
        CLIENT,
        STARTUP,
        id="a client sends its startup packet before the SSL answer",
    ),
    pytest.param(
        "ssl-negotiation", CLIENT, SSLRequest(), id="a client repeats its SSLRequest unanswered"
    ),
    pytest.param("authenticating", CLIENT, STARTUP, id="a client sends a second startup packet"),
    pytest.param(
        "password", CLIENT, SASLResponse(b"x"), id="a client sends SASL data for a password"
    ),
    pytest.param(
        "sasl-initial",
        CLIENT,
        PasswordMessage(b"pw"),
        id="a client sends a password when SASL was asked for",
    ),
    pytest.param(
        "sasl-continue",
        CLIENT,
        SASLInitialResponse("SCRAM-SHA-256", None),
        id="a client restarts SASL in the middle of it",
    ),
    pytest.param(
        "gss", CLIENT, PasswordMessage(b"pw"), id="a client sends a password when GSS was asked for"
    ),
    pytest.param("ready", CLIENT, STARTUP, id="a client sends a startup packet when ready"),
    pytest.param("ready", CLIENT, SSLRequest(), id="a client asks for SSL when ready"),
    pytest.param("ready", CLIENT, CancelRequest(1, 2), id="a client cancels on its own connection"),
    pytest.param("ready", SERVER, SSLResponse(True), id="a server answers SSL when ready"),
]


def _wire(message: Message) -> bytes:
    return encode(message)


@pytest.mark.parametrize(("state", "who", "message"), RECEIVED_AND_SENT)
def test_out_of_place_message_received_is_a_remote_error(
    state: str, who: str, message: Message
) -> None:
    pair = Pair().play(PREFIXES[state])
    _, receiver = pair.sides(who)
    receiver.receive_data(_wire(message))
    with pytest.raises(RemoteProtocolError) as info:
        receiver.next_event()
    assert info.value.sqlstate == "08P01"
    assert receiver.state is State.ERROR
    with pytest.raises(LocalProtocolError, match="ERROR state"):
        receiver.next_event()


@pytest.mark.parametrize(("state", "who", "message"), RECEIVED_AND_SENT + SENT_ONLY)
def test_out_of_place_message_sent_is_a_local_error(state: str, who: str, message: Message) -> None:
    pair = Pair().play(PREFIXES[state])
    sender, _ = pair.sides(who)
    with pytest.raises(LocalProtocolError, match="not allowed"):
        sender.send(message)
    assert sender.state is State.ERROR


@pytest.mark.parametrize(
    ("state", "who", "message"),
    [
        pytest.param("startup", SERVER, STARTUP, id="a server cannot send a startup packet"),
        pytest.param("startup", SERVER, SSLRequest(), id="a server cannot send an SSLRequest"),
        pytest.param(
            "ssl-negotiation", CLIENT, SSLResponse(True), id="a client cannot answer its own SSL"
        ),
        pytest.param(
            "password", SERVER, PasswordMessage(b"pw"), id="a server cannot send a password"
        ),
        pytest.param(
            "authenticating",
            CLIENT,
            AuthenticationOk(),
            id="a client cannot authenticate itself",
        ),
        pytest.param(
            "authenticating",
            CLIENT,
            ErrorResponse.build("28000", "x"),
            id="a client cannot send an ErrorResponse",
        ),
        pytest.param("ready", SERVER, Query("select 1"), id="a server cannot send a Query"),
        pytest.param("ready", SERVER, Terminate(), id="a server cannot send Terminate"),
        pytest.param("ready", CLIENT, ReadyForQuery("I"), id="a client cannot send ReadyForQuery"),
        pytest.param(
            "ready", CLIENT, NoticeResponse.build("01000", "x"), id="a client cannot send a notice"
        ),
    ],
)
def test_a_side_cannot_send_the_other_sides_messages(
    state: str, who: str, message: Message
) -> None:
    pair = Pair().play(PREFIXES[state])
    sender, _ = pair.sides(who)
    with pytest.raises(LocalProtocolError, match="cannot send"):
        sender.send(message)
    assert sender.state is State.ERROR


def test_a_message_that_cannot_be_encoded_does_not_advance_the_state() -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.send(StartupMessage({"user": "nul\0byte"}))
    assert client.state is State.ERROR


def test_a_connection_in_error_refuses_to_send() -> None:
    server = ServerConnection()
    server.receive_data(b"\x00\x00\x00\x01")
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    with pytest.raises(LocalProtocolError):
        server.send(ErrorResponse.build("08P01", "invalid startup packet"))


# ---------------------------------------------------------------------------
# SSL and GSS encryption negotiation


@pytest.mark.parametrize(
    "request_",
    [SSLRequest(), GSSENCRequest()],
    ids=["after an SSLRequest", "after a GSSENCRequest"],
)
@pytest.mark.parametrize(
    "stuffed",
    [
        encode(STARTUP),
        encode(Query("select 1")),
        b"\x00",
    ],
    ids=["a smuggled startup packet", "a smuggled Query", "a single smuggled byte"],
)
def test_bytes_before_the_encryption_handshake_are_refused(
    request_: Message, stuffed: bytes
) -> None:
    server = ServerConnection()
    server.receive_data(encode(request_) + stuffed)
    assert server.next_event() == request_
    with pytest.raises(RemoteProtocolError, match="unencrypted data"):
        server.send(SSLResponse(True))
    assert server.state is State.ERROR


def test_bytes_after_a_refused_ssl_request_are_read_in_plain_text() -> None:
    server = ServerConnection()
    server.receive_data(encode(SSLRequest()) + encode(STARTUP))
    assert server.next_event() == SSLRequest()
    assert server.send(SSLResponse(False)) == b"N"
    assert server.next_event() == STARTUP
    assert server.state is State.AUTHENTICATING


@pytest.mark.parametrize(
    ("request_", "accepted", "byte"),
    [
        pytest.param(SSLRequest(), True, b"S", id="accepting SSL is S"),
        pytest.param(SSLRequest(), False, b"N", id="refusing SSL is N"),
        pytest.param(GSSENCRequest(), True, b"G", id="accepting GSS encryption is G"),
        pytest.param(GSSENCRequest(), False, b"N", id="refusing GSS encryption is N"),
    ],
)
def test_server_answers_an_encryption_request_with_one_byte(
    request_: Message, accepted: bool, byte: bytes
) -> None:
    server = ServerConnection()
    server.receive_data(encode(request_))
    server.next_event()
    assert server.send(SSLResponse(accepted)) == byte
    assert server.state is State.STARTUP


@pytest.mark.parametrize(
    ("request_", "answer", "accepted"),
    [
        pytest.param(SSLRequest(), b"S", True, id="S accepts SSL"),
        pytest.param(SSLRequest(), b"N", False, id="N refuses SSL"),
        pytest.param(GSSENCRequest(), b"G", True, id="G accepts GSS encryption"),
        pytest.param(GSSENCRequest(), b"N", False, id="N refuses GSS encryption"),
    ],
)
def test_client_reads_the_answer_to_its_encryption_request(
    request_: Message, answer: bytes, accepted: bool
) -> None:
    client = ClientConnection()
    client.send(request_)
    assert client.next_event() is NEED_DATA
    client.receive_data(answer)
    assert client.next_event() == SSLResponse(accepted)
    assert client.state is State.STARTUP
    assert client.pending == 0


@pytest.mark.parametrize(
    ("request_", "answer", "problem"),
    [
        pytest.param(SSLRequest(), b"G", "invalid response", id="G is not an answer to SSL"),
        pytest.param(GSSENCRequest(), b"S", "invalid response", id="S is not an answer to GSS"),
        pytest.param(
            SSLRequest(),
            encode(ErrorResponse.build("08P01", "unsupported frontend protocol")),
            "invalid response",
            id="an ErrorResponse from a server too old for SSL",
        ),
        pytest.param(SSLRequest(), b"\x00", "invalid response", id="a NUL byte is garbage"),
        pytest.param(SSLRequest(), b"s", "invalid response", id="a lower-case s is garbage"),
        pytest.param(
            SSLRequest(),
            b"S" + encode(AuthenticationOk()),
            "unencrypted data",
            id="S followed by plain-text bytes",
        ),
        pytest.param(SSLRequest(), b"NN", "unencrypted data", id="N followed by another byte"),
    ],
)
def test_client_refuses_a_bad_answer_to_its_encryption_request(
    request_: Message, answer: bytes, problem: str
) -> None:
    client = ClientConnection()
    client.send(request_)
    client.receive_data(answer)
    with pytest.raises(RemoteProtocolError, match=problem):
        client.next_event()
    assert client.state is State.ERROR


def test_client_sees_the_server_close_instead_of_answering_ssl() -> None:
    client = ClientConnection()
    client.send(SSLRequest())
    client.receive_data(b"")
    assert client.next_event() is CONNECTION_CLOSED
