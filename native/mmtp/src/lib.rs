//! # mmtp — a sans-I/O MMTP/1 protocol core
//!
//! A Rust twin of the Python reference implementation `channel/wire/`:
//! the same frames, the same HPACK choices (presets, typed fields,
//! never-indexed names, context-free blocks), the same zstd body coding and
//! bomb checks, the same errors, events, limits and state transitions, tested
//! against the specification's vectors (`protocol_spec/vectors/`).
//!
//! Nothing here does I/O: feed a [`Connection`] bytes with
//! [`Connection::receive`], call its `send_*` methods, and collect the bytes
//! to write with [`Connection::take_output`].
//!
//! ```
//! use std::sync::Arc;
//! use mmtp::{Accept, BodyCodec, Connection, Event, Hello, Limits, Presets, Role};
//!
//! let codec = Arc::new(BodyCodec::default());
//! let presets = Arc::new(Presets::builtin());
//! let mut client = Connection::new(Role::Client, Limits::default(), codec.clone(), presets.clone());
//! let mut server = Connection::new(Role::Server, Limits::default(), codec, presets);
//! let hello = Hello { device_id: "dev-42".into(), preset_id: 1, ..Hello::default() };
//! client.send_hello(&hello, 0).unwrap();
//! client.send_request("user.get", b"{\"id\":7}", &[("locale", "zh-CN")]).unwrap();
//! let (mut wire, mut events) = (Vec::new(), Vec::new());
//! client.take_output(&mut wire);
//! server.receive(&wire, &mut events).unwrap();
//! assert!(matches!(events[0], Event::HelloReceived(_)));
//! assert!(matches!(&events[1], Event::RequestReceived { op, .. } if op == "user.get"));
//! server.accept(&Accept::default()).unwrap();
//! ```

#![forbid(unsafe_code)]

pub mod body;
pub mod connection;
pub mod dictionaries;
pub mod errors;
pub mod events;
mod fields;
pub mod frames;
pub mod headers;
pub mod hello;
pub mod hpack;
pub mod huffman;
pub mod limits;
mod messages;
pub mod prepared;
pub mod presets;
pub mod state;
pub mod typed;
pub mod varint;

pub use body::{BodyCodec, BodyUsage, EncodedBody, RAW_BODY};
pub use connection::{setting, Accept, Connection, FrameCounters, Options, UsageResolver};
pub use dictionaries::Dictionary;
pub use errors::{code_name, ErrorCode, LocalError, ProtocolError};
pub use events::Event;
pub use frames::FrameType;
pub use headers::{HeaderList, Headers};
pub use hello::{Hello, HelloAck, ALPN_PROTOCOL, PROTOCOL_VERSION};
pub use limits::Limits;
pub use prepared::PreparedPush;
pub use presets::{PresetTable, Presets};
pub use state::{Role, State};
pub use typed::{Kind, TypedTable};
