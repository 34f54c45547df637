//! Connection states and the tables that drive them (spec section 16).
//!
//! Two tables, as in the reference's `state.py`: which frame types each role
//! may receive in each state, and which triggers move a role from one state
//! to the next. Anything not in a table is a `STATE_ERROR` (by the peer) or a
//! [`LocalError`](crate::LocalError) (by us).

use crate::frames::FrameType as F;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Client before HELLO.
    Idle,
    /// Server before HELLO.
    AwaitHello,
    /// Client waiting for HELLO_ACK (may pipeline requests).
    HelloSent,
    /// Server has HELLO, has not answered yet.
    Authenticating,
    Open,
    /// A GOAWAY went one way or the other: no new streams.
    Closing,
    Closed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::AwaitHello => "await-hello",
            State::HelloSent => "hello-sent",
            State::Authenticating => "authenticating",
            State::Open => "open",
            State::Closing => "closing",
            State::Closed => "closed",
        }
    }
}

const fn set(types: &[F]) -> u16 {
    let mut bits = 0u16;
    let mut i = 0;
    while i < types.len() {
        bits |= 1 << types[i] as u16;
        i += 1;
    }
    bits
}

const SERVER_OPEN: u16 = set(&[
    F::Request,
    F::Response,
    F::Ack,
    F::Ping,
    F::Pong,
    F::Settings,
    F::GoAway,
    F::Error,
    F::Cancel,
]);
const CLIENT_OPEN: u16 = set(&[
    F::Request,
    F::Response,
    F::Push,
    F::Ping,
    F::Pong,
    F::Settings,
    F::GoAway,
    F::Error,
    F::Cancel,
    F::Dict,
]);

/// Frame types `role` may receive in `state` (spec section 16.3), as a bit set.
pub(crate) fn receivable(role: Role, state: State) -> u16 {
    match (role, state) {
        (Role::Server, State::AwaitHello) => set(&[F::Hello]),
        // Pipelined requests are decoded (to keep HPACK in step) and held;
        // PING and SETTINGS wait for HELLO_ACK so their answers cannot overtake it.
        (Role::Server, State::Authenticating) => set(&[F::Request, F::Cancel, F::Error]),
        (Role::Server, State::Open | State::Closing) => SERVER_OPEN,
        // A server may refuse a connection before the HELLO arrives.
        (Role::Client, State::Idle) => set(&[F::Error]),
        (Role::Client, State::HelloSent) => set(&[F::HelloAck, F::Error]),
        (Role::Client, State::Open | State::Closing) => CLIENT_OPEN,
        _ => 0,
    }
}

/// What moves a connection between states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    SendHello,
    RecvHelloAck,
    RecvHello,
    Accept,
    GoAway,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::SendHello => "send_hello",
            Trigger::RecvHelloAck => "recv_hello_ack",
            Trigger::RecvHello => "recv_hello",
            Trigger::Accept => "accept",
            Trigger::GoAway => "goaway",
        }
    }
}

/// The state after `trigger` (spec section 16.2), or why it cannot happen.
pub(crate) fn next_state(role: Role, state: State, trigger: Trigger) -> Result<State, String> {
    use State::*;
    let next = match (role, state, trigger) {
        (Role::Client, Idle, Trigger::SendHello) => HelloSent,
        (Role::Client, HelloSent, Trigger::RecvHelloAck) => Open,
        (Role::Server, AwaitHello, Trigger::RecvHello) => Authenticating,
        (Role::Server, Authenticating, Trigger::Accept) => Open,
        (_, Open | Closing, Trigger::GoAway) => Closing,
        _ => {
            return Err(format!(
                "{} cannot {} in state {}",
                role.name(),
                trigger.name(),
                state.name()
            ))
        }
    };
    Ok(next)
}

/// States in which `role` may start a stream (pipelining behind HELLO included).
pub(crate) fn can_start_stream(role: Role, state: State) -> bool {
    match role {
        Role::Client => matches!(state, State::HelloSent | State::Open),
        Role::Server => state == State::Open,
    }
}
