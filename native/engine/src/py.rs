//! `channel._engine`: the Python face of the engine. Converts between Python
//! objects and the engine's Rust values while holding the GIL; the engine thread
//! never touches Python. See BOUNDARY.md for the contract.

use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::Arc;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::boundary::{
    Command, Event, HeaderVec, MessageId, RpcCluster, RpcEndpoint, RpcRoute, RpcTable,
};
use crate::config::EngineConfig;
use crate::engine::Kind;
use crate::ids::ConnId;
use crate::runtime::{ListenOptions, Runtime, Setup};
use crate::ticketer::TicketKeys;
use crate::tls::TlsMaterial;

// ------------------------------------------------------------------ helpers

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// bytes (or bytearray) as a Vec; anything else is a TypeError naming `what`.
fn bytes_of(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(bytes.as_bytes().to_vec());
    }
    if let Ok(array) = obj.cast::<pyo3::types::PyByteArray>() {
        return Ok(array.to_vec());
    }
    Err(PyTypeError::new_err(format!(
        "{what}: expected bytes, got {}",
        type_name(obj)
    )))
}

/// ``what`` names the value in an error; it is put together only then (commands are
/// parsed per push: formatting it every time was most of ``submit``'s cost).
fn headers_of(obj: &Bound<'_, PyAny>, what: impl Fn() -> String) -> PyResult<HeaderVec> {
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        if tuple.is_empty() {
            return Ok(Vec::new());
        }
    }
    let mut headers = Vec::new();
    for item in obj.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "{}: expected a sequence of (name, value), got {}",
            what(),
            type_name(obj)
        ))
    })? {
        let item = item?;
        let pair: (String, String) = item.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "{}: each header must be a (str, str) pair, got {}",
                what(),
                type_name(&item)
            ))
        })?;
        headers.push(pair);
    }
    Ok(headers)
}

fn error_code(value: u64, what: &str) -> PyResult<mmtp::ErrorCode> {
    mmtp::ErrorCode::from_value(value)
        .ok_or_else(|| PyValueError::new_err(format!("{what}: {value} is not an MMTP error code")))
}

fn runtime_error(message: String) -> PyErr {
    if message.starts_with("cannot listen") || message.starts_with("cannot resolve") {
        PyOSError::new_err(message)
    } else {
        PyValueError::new_err(message)
    }
}

// ------------------------------------------------------------------ config

const CONFIG_KEYS: &[&str] = &[
    "max_connections",
    "max_connections_per_ip",
    "handshake_timeout_ms",
    "idle_factor",
    "send_buffer_high_water_bytes",
    "slow_consumer_grace_ms",
    "close_linger_ms",
    "max_read_per_round_bytes",
    "max_frames_per_round",
    "max_pending_event_bytes",
    "max_unacked_pushes",
    "mqtt_max_packet_size",
    "sweep_interval_ms",
    "rpc_report_interval_ms",
    "accepts_per_round",
    "ticket_lifetime_s",
    "early_data_max_bytes",
    "proxy_trusted",
    "proxy_max_header_bytes",
    "max_frame_size",
    "header_table_size",
    "max_header_list_size",
    "max_body_size",
    "max_concurrent_streams",
    "max_hello_size",
    "tls_cert_pem",
    "tls_key_pem",
    "tls_client_ca_pem",
    "tls_require_client_cert",
    "ticket_key_id",
    "ticket_keys",
    "presets",
    "dictionaries",
    "dict_chunk_bytes",
    "dict_delivery_bytes_per_s",
    "dict_budget_bytes",
    "usage_apps",
    "compress_min_saving",
];

/// A preset from Python: `(id, name, entries)` or `(id, name, entries, typed,
/// connection, never_indexed)`, with `typed` a list of (name, kind) pairs (spec 9.3).
fn preset_of(value: &Bound<'_, PyAny>, what: &str) -> PyResult<mmtp::PresetTable> {
    let bad = || {
        PyTypeError::new_err(format!(
            "{what}: expected (id, name, [(header, value)]) or (id, name, entries, \
             [(header, kind)], [connection names], [never-indexed names])"
        ))
    };
    let tuple = value.cast::<PyTuple>().map_err(|_| bad())?;
    let id: u32 = tuple.get_item(0)?.extract().map_err(|_| bad())?;
    let name: String = tuple.get_item(1)?.extract().map_err(|_| bad())?;
    let entries: Vec<(String, String)> = tuple.get_item(2)?.extract().map_err(|_| bad())?;
    let table = match tuple.len() {
        3 => mmtp::PresetTable::new(id, &name, entries),
        6 => {
            let typed: Vec<(String, String)> = tuple.get_item(3)?.extract().map_err(|_| bad())?;
            let mut kinds = Vec::new();
            for (header, kind) in typed {
                let kind = mmtp::Kind::parse_checked(&kind)
                    .map_err(|e| PyValueError::new_err(format!("{what}: {header}: {e}")))?;
                kinds.push((header, kind));
            }
            let connection: Vec<String> = tuple.get_item(4)?.extract().map_err(|_| bad())?;
            let never: Vec<String> = tuple.get_item(5)?.extract().map_err(|_| bad())?;
            mmtp::PresetTable::with_declarations(id, &name, entries, Some(kinds), connection, never)
        }
        _ => return Err(bad()),
    };
    table.map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

fn setup_from(config: Option<&Bound<'_, PyDict>>) -> PyResult<Setup> {
    let mut setup = Setup::default();
    let c: &mut EngineConfig = &mut setup.config;
    let mut cert = None;
    let mut key = None;
    let mut client_ca = None;
    let mut require_client_cert = false;
    let mut ticket_key_id = None;
    let mut ticket_keys = None;
    let Some(config) = config else {
        return Ok(setup);
    };
    for (name, value) in config.iter() {
        let name: String = name
            .extract()
            .map_err(|_| PyTypeError::new_err("Engine config keys must be str"))?;
        let bad = |expected: &str| {
            PyTypeError::new_err(format!(
                "Engine config {name}: expected {expected}, got {}",
                type_name(&value)
            ))
        };
        let int = || {
            value
                .extract::<u64>()
                .map_err(|_| bad("a non-negative int"))
        };
        match name.as_str() {
            "max_connections" => c.max_connections = int()? as usize,
            "max_connections_per_ip" => {
                c.max_connections_per_ip = int()?.min(u32::MAX as u64) as u32
            }
            "handshake_timeout_ms" => c.handshake_timeout_ms = int()?,
            "idle_factor" => c.idle_factor = value.extract::<f64>().map_err(|_| bad("a number"))?,
            "send_buffer_high_water_bytes" => c.send_buffer_high_water_bytes = int()? as usize,
            "slow_consumer_grace_ms" => c.slow_consumer_grace_ms = int()?,
            "close_linger_ms" => c.close_linger_ms = int()?,
            "max_read_per_round_bytes" => c.max_read_per_round_bytes = int()? as usize,
            "max_frames_per_round" => c.max_frames_per_round = int()? as usize,
            "max_pending_event_bytes" => c.max_pending_event_bytes = int()? as usize,
            "max_unacked_pushes" => c.max_unacked_pushes = int()? as usize,
            "mqtt_max_packet_size" => c.mqtt_max_packet_size = int()? as usize,
            "sweep_interval_ms" => c.sweep_interval_ms = int()?,
            "rpc_report_interval_ms" => c.rpc_report_interval_ms = int()?,
            "accepts_per_round" => c.accepts_per_round = int()? as usize,
            "ticket_lifetime_s" => c.ticket_lifetime_s = int()?.min(u32::MAX as u64) as u32,
            "early_data_max_bytes" => c.early_data_max_bytes = int()?.min(u32::MAX as u64) as u32,
            "proxy_trusted" => {
                let entries = value
                    .extract::<Vec<String>>()
                    .map_err(|_| bad("a list of str (addresses or CIDR networks)"))?;
                c.proxy_trusted = crate::proxy::Trusted::parse(&entries)
                    .map_err(|e| PyValueError::new_err(format!("Engine config {e}")))?;
            }
            "proxy_max_header_bytes" => c.proxy_max_header_bytes = int()? as usize,
            "max_frame_size" => c.mmtp.max_frame_size = int()?,
            "header_table_size" => c.mmtp.header_table_size = int()?,
            "max_header_list_size" => c.mmtp.max_header_list_size = int()?,
            "max_body_size" => c.mmtp.max_body_size = int()?,
            "max_concurrent_streams" => c.mmtp.max_concurrent_streams = int()?,
            "max_hello_size" => c.mmtp.max_hello_size = int()?,
            "tls_cert_pem" => cert = Some(bytes_of(&value, "Engine config tls_cert_pem")?),
            "tls_key_pem" => key = Some(bytes_of(&value, "Engine config tls_key_pem")?),
            "tls_client_ca_pem" => {
                if !value.is_none() {
                    client_ca = Some(bytes_of(&value, "Engine config tls_client_ca_pem")?);
                }
            }
            "tls_require_client_cert" => {
                require_client_cert = value.extract::<bool>().map_err(|_| bad("a bool"))?
            }
            "ticket_key_id" => {
                ticket_key_id = Some(value.extract::<u8>().map_err(|_| bad("an int 0..255"))?)
            }
            "ticket_keys" => ticket_keys = Some(ticket_keys_of(&value)?),
            "presets" => {
                let mut presets = Vec::new();
                for item in value.try_iter().map_err(|_| bad("a list of presets"))? {
                    presets.push(preset_of(&item?, "Engine config presets")?);
                }
                setup.presets = presets;
            }
            "dict_chunk_bytes" => c.dict_chunk_bytes = int()? as usize,
            "dict_delivery_bytes_per_s" => c.dict_delivery_bytes_per_s = int()?,
            "dict_budget_bytes" => c.dict_budget_bytes = int()?,
            "usage_apps" => {
                c.usage_apps = value
                    .extract::<Vec<String>>()
                    .map_err(|_| bad("a list of app ids"))?
            }
            "compress_min_saving" => {
                let share = value.extract::<f64>().map_err(|_| bad("a float 0..1"))?;
                if !(0.0..1.0).contains(&share) {
                    return Err(bad("a float 0..1"));
                }
                c.compress_min_saving = share;
            }
            "dictionaries" => {
                let mut dictionaries = Vec::new();
                for item in value.try_iter().map_err(|_| bad("a list of bytes"))? {
                    dictionaries.push(bytes_of(&item?, "Engine config dictionaries")?);
                }
                setup.dictionaries = dictionaries;
            }
            _ => {
                return Err(PyValueError::new_err(format!(
                    "Engine config: unknown key {name:?} (known: {})",
                    CONFIG_KEYS.join(", ")
                )))
            }
        }
    }
    match (cert, key) {
        (Some(cert_pem), Some(key_pem)) => {
            setup.tls = Some(TlsMaterial {
                cert_pem,
                key_pem,
                client_ca_pem: client_ca,
                require_client_cert,
            })
        }
        (None, None) if client_ca.is_none() => {}
        _ => {
            return Err(PyValueError::new_err(
                "Engine config: tls_cert_pem and tls_key_pem go together (tls_client_ca_pem needs them)",
            ))
        }
    }
    match (ticket_key_id, ticket_keys) {
        (Some(id), Some(keys)) => setup.ticket_keys = Some((id, keys)),
        (None, None) => {}
        _ => {
            return Err(PyValueError::new_err(
                "Engine config: ticket_key_id and ticket_keys go together",
            ))
        }
    }
    Ok(setup)
}

fn ticket_keys_of(value: &Bound<'_, PyAny>) -> PyResult<TicketKeys> {
    let mut keys = Vec::new();
    for item in value.try_iter()? {
        let item = item?;
        let (id, key): (u8, Bound<'_, PyAny>) = item.extract().map_err(|_| {
            PyTypeError::new_err("ticket keys: expected (key id 0..255, 32 bytes) pairs")
        })?;
        keys.push((id, bytes_of(&key, "ticket key")?));
    }
    Ok(keys)
}

// ------------------------------------------------------------------ events

/// Keys interned once: a handshake storm builds one of these per device.
fn hello_dict<'py>(py: Python<'py>, hello: &mmtp::Hello) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(pyo3::intern!(py, "device_id"), &hello.device_id)?;
    d.set_item(pyo3::intern!(py, "app_id"), &hello.app_id)?;
    d.set_item(pyo3::intern!(py, "token"), PyBytes::new(py, &hello.token))?;
    d.set_item(
        pyo3::intern!(py, "resume_ticket"),
        PyBytes::new(py, &hello.resume_ticket),
    )?;
    d.set_item(
        pyo3::intern!(py, "dictionaries"),
        PyTuple::new(py, &hello.dictionaries)?,
    )?;
    d.set_item(pyo3::intern!(py, "preset_id"), hello.preset_id)?;
    d.set_item(pyo3::intern!(py, "heartbeat_s"), hello.heartbeat_s)?;
    d.set_item(
        pyo3::intern!(py, "header_table_size"),
        hello.header_table_size,
    )?;
    d.set_item(pyo3::intern!(py, "max_frame_size"), hello.max_frame_size)?;
    d.set_item(pyo3::intern!(py, "app_version"), &hello.app_version)?;
    d.set_item(pyo3::intern!(py, "platform"), &hello.platform)?;
    d.set_item(pyo3::intern!(py, "client_time_ms"), hello.client_time_ms)?;
    d.set_item(
        pyo3::intern!(py, "max_header_list_size"),
        hello.max_header_list_size,
    )?;
    d.set_item(pyo3::intern!(py, "max_body_size"), hello.max_body_size)?;
    d.set_item(
        pyo3::intern!(py, "max_concurrent_streams"),
        hello.max_concurrent_streams,
    )?;
    d.set_item(pyo3::intern!(py, "version"), hello.version)?;
    Ok(d)
}

fn headers_tuple<'py>(py: Python<'py>, headers: &mmtp::Headers) -> PyResult<Bound<'py, PyTuple>> {
    let pairs: Vec<Bound<'py, PyTuple>> = headers
        .iter()
        .map(|(n, v)| PyTuple::new(py, [n, v]))
        .collect::<PyResult<_>>()?;
    PyTuple::new(py, pairs)
}

macro_rules! tuple {
    ($py:expr, $($item:expr),+ $(,)?) => {
        PyTuple::new($py, [$($item.into_bound_py_any($py)?),+])?.into_any()
    };
}

/// One entry per acknowledged message id: its connection and the id as text (an id
/// that is not UTF-8 becomes one no push has, as Python's decoding would refuse it).
fn append_acks(
    conns: &Bound<'_, PyList>,
    ids: &Bound<'_, PyList>,
    conn: ConnId,
    message_ids: &[MessageId],
) -> PyResult<()> {
    let py = conns.py();
    for message_id in message_ids {
        conns.append(conn.0)?;
        ids.append(PyString::new(py, &String::from_utf8_lossy(message_id)))?;
    }
    Ok(())
}

fn event_tuple<'py>(py: Python<'py>, event: Event) -> PyResult<Bound<'py, PyAny>> {
    let kind = |s: &'static str| PyString::intern(py, s);
    Ok(match event {
        Event::Hello {
            conn,
            peer_ip,
            hello,
            client_cert_cn,
            tcp_fast_open,
        } => tuple!(
            py,
            kind("HELLO"),
            conn.0,
            peer_ip.to_string(),
            hello_dict(py, &hello)?,
            client_cert_cn,
            tcp_fast_open
        ),
        Event::Request {
            conn,
            stream_id,
            op,
            headers,
            body,
            early,
            gate,
            busy,
        } => tuple!(
            py,
            kind("REQUEST"),
            conn.0,
            stream_id,
            op,
            headers_tuple(py, &headers)?,
            PyBytes::new(py, &body),
            early,
            gate,
            busy
        ),
        Event::RpcHandoff(h) => {
            let headers = headers_tuple(py, &h.headers)?;
            // The socket is Python's from here (its `socket.socket(fileno=...)`); on the
            // error above it closed with the event.
            let fd = h.fd.into_raw_fd();
            tuple!(
                py,
                kind("RPC_HANDOFF"),
                h.conn.0,
                h.stream_id,
                h.op,
                headers,
                PyBytes::new(py, &h.body),
                h.early,
                h.route,
                h.cluster,
                h.endpoint,
                fd,
                PyBytes::new(py, &h.received),
                PyBytes::new(py, &h.unsent),
                h.reused,
                h.elapsed_us
            )
        }
        Event::RpcDone(calls) => {
            let list = PyList::empty(py);
            for c in calls {
                let request_body = c.request_body.map(|b| PyBytes::new(py, &b));
                let response_body = c.response_body.map(|b| PyBytes::new(py, &b));
                list.append(tuple!(
                    py,
                    c.conn.0,
                    c.route,
                    c.cluster,
                    c.took_us,
                    c.early,
                    request_body,
                    response_body
                ))?;
            }
            tuple!(py, kind("RPC_DONE"), list)
        }
        Event::Answer {
            conn,
            call_token,
            status,
            headers,
            body,
            retry_after_ms,
            message,
        } => tuple!(
            py,
            kind("ANSWER"),
            conn.0,
            call_token,
            status,
            headers_tuple(py, &headers)?,
            PyBytes::new(py, &body),
            retry_after_ms,
            message
        ),
        // take_events gathers them into one; alone, the same shape.
        Event::Acks { conn, message_ids } => {
            let (conns, ids) = (PyList::empty(py), PyList::empty(py));
            append_acks(&conns, &ids, conn, &message_ids)?;
            tuple!(py, kind("ACKS"), conns, ids)
        }
        Event::MqttAcks { conn, message_ids } => {
            let (conns, ids) = (PyList::empty(py), PyList::empty(py));
            append_acks(&conns, &ids, conn, &message_ids)?;
            tuple!(py, kind("MQTT_ACKS"), conns, ids)
        }
        Event::Cancel { conn, stream_id } => tuple!(py, kind("CANCEL"), conn.0, stream_id),
        Event::GoAway { conn } => tuple!(py, kind("GOAWAY"), conn.0),
        Event::Closed { conn, reason } => tuple!(py, kind("CLOSED"), conn.0, reason),
        Event::MqttOpen {
            conn,
            peer_ip,
            client_cert_cn,
            tls,
        } => tuple!(
            py,
            kind("MQTT_OPEN"),
            conn.0,
            peer_ip.to_string(),
            client_cert_cn,
            tls
        ),
        // take_events gathers consecutive ones into one; alone, the same shape.
        Event::MqttPubacks { conn, packet_ids } => tuple!(
            py,
            kind("MQTT_PUBACKS"),
            PyList::new(py, [conn.0])?,
            PyList::new(py, [PyList::new(py, packet_ids)?])?
        ),
        Event::MqttPackets { conn, packets } => {
            let packets: Vec<Bound<'py, PyBytes>> =
                packets.iter().map(|p| PyBytes::new(py, p)).collect();
            tuple!(py, kind("MQTT_PACKETS"), conn.0, PyList::new(py, packets)?)
        }
        Event::MqttRefused {
            conn,
            message_id,
            tracked,
            reason,
        } => tuple!(
            py,
            kind("MQTT_REFUSED"),
            conn.0,
            PyBytes::new(py, &message_id),
            tracked,
            reason
        ),
        Event::PushFailed {
            conn,
            message_id,
            reason,
        } => tuple!(
            py,
            kind("PUSH_FAILED"),
            conn.0,
            PyBytes::new(py, &message_id),
            reason
        ),
        Event::FanoutDone {
            message_id,
            written,
            skipped,
        } => tuple!(
            py,
            kind("FANOUT_DONE"),
            PyBytes::new(py, &message_id),
            written,
            skipped
        ),
        Event::TlsTicket { ticket_id, state } => tuple!(
            py,
            kind("TLS_TICKET"),
            PyBytes::new(py, &ticket_id),
            PyBytes::new(py, &state)
        ),
        Event::TlsResume { conn, ticket_id } => {
            tuple!(py, kind("TLS_RESUME"), conn.0, PyBytes::new(py, &ticket_id))
        }
    })
}

// ---------------------------------------------------------------- commands

/// One command tuple, with errors that name the command and the field.
struct Fields<'a, 'py> {
    tuple: &'a Bound<'py, PyTuple>,
    index: usize,
    kind: &'a str,
}

impl<'py> Fields<'_, 'py> {
    fn err(&self, field: &str, expected: &str) -> PyErr {
        PyTypeError::new_err(format!(
            "command {} ({}): {field}: expected {expected}",
            self.index, self.kind
        ))
    }

    fn item(&self, at: usize) -> PyResult<Bound<'py, PyAny>> {
        self.tuple.get_item(at)
    }

    fn arity(&self, names: &[&str]) -> PyResult<()> {
        if self.tuple.len() != names.len() + 1 {
            return Err(PyTypeError::new_err(format!(
                "command {} ({}): expected ({}, {}), got {} items",
                self.index,
                self.kind,
                self.kind,
                names.join(", "),
                self.tuple.len()
            )));
        }
        Ok(())
    }

    fn int(&self, at: usize, field: &str) -> PyResult<u64> {
        self.item(at)?
            .extract::<u64>()
            .map_err(|_| self.err(field, "a non-negative int"))
    }

    fn conn(&self, at: usize) -> PyResult<ConnId> {
        Ok(ConnId(self.int(at, "conn")?))
    }

    fn boolean(&self, at: usize, field: &str) -> PyResult<bool> {
        self.item(at)?
            .extract::<bool>()
            .map_err(|_| self.err(field, "a bool"))
    }

    fn string(&self, at: usize, field: &str) -> PyResult<String> {
        self.item(at)?
            .extract::<String>()
            .map_err(|_| self.err(field, "a str"))
    }

    fn bytes(&self, at: usize, field: &str) -> PyResult<Vec<u8>> {
        let item = self.item(at)?;
        if let Ok(bytes) = item.cast::<PyBytes>() {
            return Ok(bytes.as_bytes().to_vec()); // the usual case: no error text made
        }
        bytes_of(
            &item,
            &format!("command {} ({}): {field}", self.index, self.kind),
        )
    }

    fn headers(&self, at: usize) -> PyResult<HeaderVec> {
        headers_of(&self.item(at)?, || {
            format!("command {} ({}): headers", self.index, self.kind)
        })
    }

    fn code(&self, at: usize) -> PyResult<mmtp::ErrorCode> {
        let value = self.int(at, "code")?;
        error_code(
            value,
            &format!("command {} ({}): code", self.index, self.kind),
        )
    }

    fn message_id(&self, at: usize, max: u64) -> PyResult<MessageId> {
        let item = self.item(at)?;
        let owned;
        let id: &[u8] = match item.cast::<PyBytes>() {
            Ok(bytes) => bytes.as_bytes(),
            Err(_) => {
                owned = self.bytes(at, "message_id")?;
                &owned
            }
        };
        if id.is_empty() || id.len() as u64 > max {
            return Err(PyValueError::new_err(format!(
                "command {} ({}): message_id must be 1..{max} bytes, got {}",
                self.index,
                self.kind,
                id.len()
            )));
        }
        Ok(MessageId::from(id))
    }
}

type RouteSpec = (String, bool, Vec<String>, Option<(usize, u64)>);
type EndpointSpec = (String, u16, String, String, u64);
type ClusterSpec = (
    String,
    Vec<EndpointSpec>,
    usize,
    u64,
    usize,
    usize,
    usize,
    usize,
);

/// `RPC_TABLE`'s table: (routes, clusters, user agent); see `RpcRouter.native_table`.
fn rpc_table_of(item: &Bound<'_, PyAny>, f: &Fields<'_, '_>) -> PyResult<RpcTable> {
    let (routes, clusters, user_agent): (Vec<RouteSpec>, Vec<ClusterSpec>, String) = item
        .extract()
        .map_err(|_| f.err("table", "(routes, clusters, user_agent)"))?;
    let mut table = RpcTable {
        user_agent,
        ..RpcTable::default()
    };
    for (name, endpoints, max_connections, keepalive_ms, head, headers, body, max_calls) in clusters
    {
        if max_connections == 0 || head == 0 || headers == 0 || max_calls == 0 {
            let why = "clusters with max_connections, limits and max_calls >= 1";
            return Err(f.err("table", why));
        }
        let mut eps = Vec::new();
        for (ip, port, authority, prefix, down_ms) in endpoints {
            let ip: std::net::IpAddr = ip
                .parse()
                .map_err(|_| f.err("table", "endpoints with an IP address"))?;
            if !crate::h1::target_ok(&prefix) || authority.contains(['\r', '\n', '\0']) {
                return Err(f.err("table", "endpoints with a visible-ASCII path and a host"));
            }
            eps.push(RpcEndpoint {
                addr: std::net::SocketAddr::new(ip, port),
                authority,
                prefix,
                down_ms,
            });
        }
        table.clusters.push(RpcCluster {
            name,
            endpoints: eps,
            max_connections,
            keepalive_ms,
            limits: crate::h1::Limits {
                max_head_bytes: head,
                max_headers: headers,
                max_body_bytes: body,
            },
            max_calls,
        });
    }
    for (pattern, idempotent, idempotent_ops, native) in routes {
        if let Some((cluster, _)) = native {
            if cluster >= table.clusters.len() {
                return Err(f.err("table", "routes naming a cluster of the table"));
            }
        }
        table.routes.push(RpcRoute {
            pattern,
            idempotent,
            idempotent_ops,
            native,
        });
    }
    Ok(table)
}

fn parse_command(index: usize, item: &Bound<'_, PyAny>, runtime: &Runtime) -> PyResult<Command> {
    let tuple = item.cast::<PyTuple>().map_err(|_| {
        PyTypeError::new_err(format!(
            "command {index}: expected a tuple, got {}",
            type_name(item)
        ))
    })?;
    let kind_item = tuple.get_item(0).ok();
    // Borrowed, not copied: the kind is only compared (and named in errors).
    let kind = kind_item
        .as_ref()
        .and_then(|k| k.cast::<PyString>().ok())
        .and_then(|k| k.to_str().ok())
        .ok_or_else(|| {
            PyTypeError::new_err(format!(
                "command {index}: the first item must be its kind (str)"
            ))
        })?;
    let f = Fields { tuple, index, kind };
    let max_message_id = runtime.shared.config.mmtp.max_message_id_length;
    let command = match f.kind {
        "ACCEPT" => {
            let names = [
                "conn",
                "session_id",
                "resume_ticket",
                "heartbeat_s",
                "server_time_ms",
                "resumed",
                "newest_dictionary",
            ];
            // newest_dictionary may be left out (the newest dictionary held).
            if tuple.len() != names.len() + 1 {
                f.arity(&names[..6])?;
            }
            let newest = if tuple.len() == names.len() + 1 && !f.item(7)?.is_none() {
                let id = f.int(7, "newest_dictionary")?;
                Some(u32::try_from(id).map_err(|_| f.err("newest_dictionary", "a dictionary id"))?)
            } else {
                None
            };
            Command::Accept {
                conn: f.conn(1)?,
                session_id: f.bytes(2, "session_id")?,
                resume_ticket: f.bytes(3, "resume_ticket")?,
                heartbeat_s: f.int(4, "heartbeat_s")?,
                server_time_ms: f.int(5, "server_time_ms")?,
                resumed: f.boolean(6, "resumed")?,
                newest_dictionary: newest,
            }
        }
        "ADD_DICTIONARY" => {
            f.arity(&["mmtpdict"])?;
            let data = f.bytes(1, "mmtpdict")?;
            let dictionary = mmtp::Dictionary::from_file_bytes(&data).map_err(|e| {
                PyValueError::new_err(format!("command {index} (ADD_DICTIONARY): {e}"))
            })?;
            Command::AddDictionary(dictionary)
        }
        "ADD_PRESET" => {
            if tuple.len() != 7 {
                f.arity(&[
                    "id",
                    "name",
                    "entries",
                    "typed",
                    "connection",
                    "never_indexed",
                ])?;
            }
            let spec = PyTuple::new(tuple.py(), tuple.iter().skip(1))?;
            let what = format!("command {index} (ADD_PRESET)");
            Command::AddPreset(Box::new(preset_of(spec.as_any(), &what)?))
        }
        "SET_USAGE_APPS" => {
            f.arity(&["apps"])?;
            let apps: Vec<String> = f
                .item(1)?
                .extract()
                .map_err(|_| f.err("apps", "a list of str"))?;
            Command::SetUsageApps(apps)
        }
        "DICT" => {
            f.arity(&["conns", "dict_id"])?;
            let conns: Vec<u64> = f
                .item(1)?
                .extract()
                .map_err(|_| f.err("conns", "a list of conn ids"))?;
            let dict_id = u32::try_from(f.int(2, "dict_id")?)
                .ok()
                .filter(|&id| id > 0)
                .ok_or_else(|| f.err("dict_id", "a dictionary id 1..2^32-1"))?;
            Command::Dict {
                conns: conns.into_iter().map(ConnId).collect(),
                dict_id,
            }
        }
        "REJECT" => {
            f.arity(&["conn", "code", "message", "retry_after_ms"])?;
            Command::Reject {
                conn: f.conn(1)?,
                code: f.code(2)?,
                message: f.string(3, "message")?,
                retry_after_ms: f.int(4, "retry_after_ms")?,
            }
        }
        "RESPOND" => {
            f.arity(&["conn", "stream_id", "status", "headers", "body"])?;
            Command::Respond {
                conn: f.conn(1)?,
                stream_id: f.int(2, "stream_id")?,
                status: f.int(3, "status")?,
                headers: f.headers(4)?,
                body: f.bytes(5, "body")?,
            }
        }
        "STREAM_ERROR" => {
            f.arity(&["conn", "stream_id", "code", "message", "retry_after_ms"])?;
            Command::StreamError {
                conn: f.conn(1)?,
                stream_id: f.int(2, "stream_id")?,
                code: f.code(3)?,
                message: f.string(4, "message")?,
                retry_after_ms: f.int(5, "retry_after_ms")?,
            }
        }
        "CALL" => {
            f.arity(&["conn", "call_token", "op", "headers", "body"])?;
            Command::Call {
                conn: f.conn(1)?,
                call_token: f.int(2, "call_token")?,
                op: f.string(3, "op")?,
                headers: f.headers(4)?,
                body: f.bytes(5, "body")?,
            }
        }
        "CANCEL_CALL" => {
            f.arity(&["conn", "call_token"])?;
            Command::CancelCall {
                conn: f.conn(1)?,
                call_token: f.int(2, "call_token")?,
            }
        }
        "PUSH" => {
            f.arity(&["conn", "message_id", "headers", "body", "tracked"])?;
            Command::Push {
                conn: f.conn(1)?,
                message_id: f.message_id(2, max_message_id)?,
                headers: f.headers(3)?,
                body: f.bytes(4, "body")?,
                tracked: f.boolean(5, "tracked")?,
            }
        }
        "FANOUT" => {
            f.arity(&["message_id", "headers", "body", "targets"])?;
            let message_id = f.message_id(1, max_message_id)?;
            let headers = f.headers(2)?;
            let body = f.bytes(3, "body")?;
            let targets_obj = f.item(4)?;
            let targets = if targets_obj.is_none() {
                None
            } else {
                let ids: Vec<u64> = targets_obj
                    .extract()
                    .map_err(|_| f.err("targets", "None or a list of conn ids"))?;
                Some(ids.into_iter().map(ConnId).collect())
            };
            let push =
                mmtp::PreparedPush::new(&message_id, &body, &headers, runtime.shared.codec.clone());
            Command::Fanout {
                push: Arc::new(push),
                message_id,
                targets,
            }
        }
        "GOAWAY" => {
            f.arity(&["conn", "code", "reconnect_after_ms", "message"])?;
            let conn_obj = f.item(1)?;
            Command::GoAway {
                conn: if conn_obj.is_none() {
                    None
                } else {
                    Some(f.conn(1)?)
                },
                code: f.code(2)?,
                reconnect_after_ms: f.int(3, "reconnect_after_ms")?,
                message: f.string(4, "message")?,
            }
        }
        "END" => {
            f.arity(&["conn", "code", "message"])?;
            Command::End {
                conn: f.conn(1)?,
                code: f.code(2)?,
                message: f.string(3, "message")?,
            }
        }
        "CLOSE" | "MQTT_CLOSE" => {
            f.arity(&["conn"])?;
            Command::Close { conn: f.conn(1)? }
        }
        "ABORT" => {
            f.arity(&["conn"])?;
            Command::Abort { conn: f.conn(1)? }
        }
        "SET_IDLE" => {
            f.arity(&["conn", "idle_timeout_ms"])?;
            Command::SetIdle {
                conn: f.conn(1)?,
                idle_timeout_ms: f.int(2, "idle_timeout_ms")?,
            }
        }
        "MQTT_WRITE" => {
            f.arity(&["conn", "data"])?;
            Command::MqttWrite {
                conn: f.conn(1)?,
                data: f.bytes(2, "data")?,
            }
        }
        "RPC_TABLE" => {
            f.arity(&["table"])?;
            let item = f.item(1)?;
            if item.is_none() {
                Command::RpcTable(None)
            } else {
                Command::RpcTable(Some(Box::new(rpc_table_of(&item, &f)?)))
            }
        }
        "RPC_SESSION" => {
            f.arity(&["conn", "info"])?;
            let item = f.item(2)?;
            let info = if item.is_none() {
                None
            } else {
                type Info = (HeaderVec, f64, f64, f64, Option<(f64, usize, usize)>);
                let (identity, rate, burst, tokens, sample): Info =
                    item.extract().map_err(|_| {
                        f.err("info", "(identity headers, rate, burst, tokens, sample)")
                    })?;
                let sample =
                    sample.map(
                        |(fraction, min_bytes, max_bytes)| crate::boundary::Sampling {
                            fraction,
                            min_bytes,
                            max_bytes,
                        },
                    );
                let identity = crate::h1::identity_block(&identity).ok_or_else(|| {
                    f.err(
                        "info",
                        "identity headers with token names and no control characters",
                    )
                })?;
                let finite = [rate, burst, tokens]
                    .iter()
                    .all(|v| v.is_finite() && *v >= 0.0);
                if !finite {
                    return Err(f.err("info", "a rate, burst and tokens >= 0"));
                }
                Some(Box::new(crate::boundary::RpcSessionInfo {
                    identity,
                    requests_per_second: rate,
                    request_burst: burst,
                    tokens,
                    sample,
                }))
            };
            Command::RpcSession {
                conn: f.conn(1)?,
                info,
            }
        }
        "CLOSE_IDLE" => {
            f.arity(&["conn"])?;
            Command::CloseIdle { conn: f.conn(1)? }
        }
        "MQTT_PUSHES" => {
            let names = [
                "conn",
                "head",
                "mqtt5",
                "limit",
                "max_waiting",
                "max_packet_bytes",
                "dup_before_ms",
            ];
            f.arity(&names)?;
            let limit = f.int(4, "limit")?;
            if !(1..=65535).contains(&limit) {
                return Err(PyValueError::new_err(format!(
                    "command {index} (MQTT_PUSHES): limit must be 1..65535, got {limit}"
                )));
            }
            Command::MqttPushes {
                conn: f.conn(1)?,
                setup: crate::mqttout::PushSetup {
                    head: f.bytes(2, "head")?,
                    mqtt5: f.boolean(3, "mqtt5")?,
                    limit: limit as usize,
                    max_waiting: f.int(5, "max_waiting")? as usize,
                    max_packet_bytes: f.int(6, "max_packet_bytes")? as usize,
                    dup_before_ms: f.int(7, "dup_before_ms")?,
                },
            }
        }
        "MQTT_PUSH" => {
            f.arity(&["conn", "message_id", "headers", "body", "tracked"])?;
            Command::MqttPush {
                conn: f.conn(1)?,
                message_id: f.message_id(2, max_message_id)?,
                headers: f.headers(3)?,
                body: f.bytes(4, "body")?,
                tracked: f.boolean(5, "tracked")?,
            }
        }
        "MQTT_HELD" => {
            f.arity(&["conn", "data"])?;
            Command::MqttHeld {
                conn: f.conn(1)?,
                data: f.bytes(2, "data")?,
            }
        }
        "TLS_RESUME" => {
            f.arity(&["conn", "ticket_id", "state"])?;
            let state = f.item(3)?;
            Command::TlsResume {
                conn: f.conn(1)?,
                ticket_id: f.bytes(2, "ticket_id")?,
                state: if state.is_none() {
                    None
                } else {
                    Some(f.bytes(3, "state")?)
                },
            }
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "command {index}: unknown kind {other:?}"
            )))
        }
    };
    Ok(command)
}

// ------------------------------------------------------------------ engine

/// The native connection engine (one I/O thread).
#[pyclass(frozen, module = "channel._engine", name = "Engine")]
pub struct PyEngine {
    runtime: Runtime,
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (config = None))]
    fn new(config: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let setup = setup_from(config)?;
        let runtime = Runtime::start(setup)
            .map_err(|e| PyValueError::new_err(format!("Engine config: {e}")))?;
        Ok(PyEngine { runtime })
    }

    /// Bind, listen and serve; returns the real port (port 0 picks one).
    #[pyo3(signature = (kind, host, port, *, tls, reuse_port = true, backlog = 4096, fast_open_queue = 0, proxy = false))]
    #[allow(clippy::too_many_arguments)]
    fn listen(
        &self,
        kind: &str,
        host: &str,
        port: u16,
        tls: bool,
        reuse_port: bool,
        backlog: i32,
        fast_open_queue: u32,
        proxy: bool,
    ) -> PyResult<u16> {
        let kind = match kind {
            "mmtp" => Kind::Mmtp,
            "mqtt" => Kind::Mqtt,
            other => {
                return Err(PyValueError::new_err(format!(
                    "listen: kind must be \"mmtp\" or \"mqtt\", got {other:?}"
                )))
            }
        };
        let options = ListenOptions {
            tls,
            reuse_port,
            backlog,
            fast_open_queue,
            proxy,
        };
        self.runtime
            .listen(kind, host, port, options)
            .map_err(runtime_error)
    }

    /// The eventfd to watch (``loop.add_reader``): readable when events wait.
    fn event_fd(&self) -> i32 {
        self.runtime.shared.eventfd.as_raw_fd()
    }

    /// Every event gathered since the last call, oldest first (clears the eventfd).
    fn take_events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let (events, fanout_acks) = self.runtime.shared.take_events();
        let list = PyList::empty(py);
        // Every ACKS event of the batch becomes one ("ACKS", conns, message ids) at the
        // place of the first: flat lists, one entry per ACK, so Python walks them in one
        // call instead of an event per connection. Moving an ACK earlier is safe: what
        // followed it for its connection (its CLOSED) still follows it.
        let mut ack_conns: Option<(Bound<'py, PyList>, Bound<'py, PyList>)> = None;
        // Consecutive MQTT_PUBACKS events become one ("MQTT_PUBACKS", conns, lists of
        // packet ids), in place: they never move past another event.
        let mut pubacks: Option<(Bound<'py, PyList>, Bound<'py, PyList>)> = None;
        // MQTT_ACKS (pushes the engine holds for MQTT boxes) as ACKS: one event at the
        // place of the first.
        let mut mqtt_acks: Option<(Bound<'py, PyList>, Bound<'py, PyList>)> = None;
        for event in events {
            if let Event::Acks { conn, message_ids } = event {
                let (conns, ids) = match &ack_conns {
                    Some(lists) => lists,
                    None => {
                        let lists = (PyList::empty(py), PyList::empty(py));
                        list.append(tuple!(py, PyString::intern(py, "ACKS"), &lists.0, &lists.1))?;
                        pubacks = None;
                        ack_conns.insert(lists)
                    }
                };
                append_acks(conns, ids, conn, &message_ids)?;
                continue;
            }
            if let Event::MqttAcks { conn, message_ids } = event {
                let (conns, ids) = match &mqtt_acks {
                    Some(lists) => lists,
                    None => {
                        let lists = (PyList::empty(py), PyList::empty(py));
                        let kind = PyString::intern(py, "MQTT_ACKS");
                        list.append(tuple!(py, kind, &lists.0, &lists.1))?;
                        pubacks = None;
                        mqtt_acks.insert(lists)
                    }
                };
                append_acks(conns, ids, conn, &message_ids)?;
                continue;
            }
            if let Event::MqttPubacks { conn, packet_ids } = event {
                let (conns, ids) = match &pubacks {
                    Some(lists) => lists,
                    None => {
                        let lists = (PyList::empty(py), PyList::empty(py));
                        let kind = PyString::intern(py, "MQTT_PUBACKS");
                        list.append(tuple!(py, kind, &lists.0, &lists.1))?;
                        pubacks.insert(lists)
                    }
                };
                conns.append(conn.0)?;
                ids.append(PyList::new(py, packet_ids)?)?;
                continue;
            }
            pubacks = None;
            list.append(event_tuple(py, event)?)?;
        }
        if !fanout_acks.is_empty() {
            let counts = PyDict::new(py);
            for (message_id, count) in fanout_acks {
                counts.set_item(PyBytes::new(py, &message_id), count)?;
            }
            list.append(tuple!(py, PyString::intern(py, "FANOUT_ACKS"), counts))?;
        }
        Ok(list)
    }

    /// Hand a batch of commands to the engine (applied in order). A malformed
    /// command raises and none of the batch is applied.
    fn submit(&self, commands: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut parsed = Vec::new();
        for (index, item) in commands.try_iter()?.enumerate() {
            parsed.push(parse_command(index, &item?, &self.runtime)?);
        }
        self.runtime.shared.submit(parsed);
        Ok(())
    }

    /// New certificate (and client CA) for new connections; open ones are kept.
    #[pyo3(signature = (cert_pem, key_pem, client_ca_pem = None, require_client_cert = false))]
    fn reload_tls(
        &self,
        cert_pem: &Bound<'_, PyAny>,
        key_pem: &Bound<'_, PyAny>,
        client_ca_pem: Option<&Bound<'_, PyAny>>,
        require_client_cert: bool,
    ) -> PyResult<()> {
        let material = TlsMaterial {
            cert_pem: bytes_of(cert_pem, "cert_pem")?,
            key_pem: bytes_of(key_pem, "key_pem")?,
            client_ca_pem: match client_ca_pem {
                Some(pem) if !pem.is_none() => Some(bytes_of(pem, "client_ca_pem")?),
                _ => None,
            },
            require_client_cert,
        };
        self.runtime
            .reload_tls(&material)
            .map_err(PyValueError::new_err)
    }

    /// Rotate the TLS ticket keys: seal with `current_id`, open with any of `keys`.
    fn set_ticket_keys(&self, current_id: u8, keys: &Bound<'_, PyAny>) -> PyResult<()> {
        let keys = ticket_keys_of(keys)?;
        self.runtime
            .shared
            .ticketer
            .set_keys(current_id, &keys)
            .map_err(PyValueError::new_err)
    }

    /// Stop accepting connections (open ones stay); returns once done.
    fn close_listeners(&self, py: Python<'_>) -> PyResult<()> {
        let runtime = &self.runtime;
        py.detach(|| runtime.close_listeners())
            .map_err(PyRuntimeError::new_err)
    }

    /// Counters for /metrics.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let shared = &self.runtime.shared;
        let d = PyDict::new(py);
        for (name, value) in shared.stats.snapshot() {
            d.set_item(name, value)?;
        }
        let frames = &shared.frames;
        for (key, counters) in [
            ("frames_in", &frames.received),
            ("frames_out", &frames.sent),
            ("frame_bytes_in", &frames.received_bytes),
            ("frame_bytes_out", &frames.sent_bytes),
        ] {
            let by_type = PyDict::new(py);
            for (index, counter) in counters.iter().enumerate() {
                if let Some(frame_type) = mmtp::FrameType::from_u8(index as u8) {
                    by_type.set_item(
                        frame_type.name(),
                        counter.load(std::sync::atomic::Ordering::Relaxed),
                    )?;
                }
            }
            d.set_item(key, by_type)?;
        }
        let (raw, wire) = shared.codec.encoded_bytes();
        d.set_item("body_bytes_raw", raw)?;
        d.set_item("body_bytes_wire", wire)?;
        d.set_item("body_compression_skipped", shared.codec.skipped_bodies())?;
        let queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        d.set_item("event_queue_bytes", queue.bytes)?;
        d.set_item("event_queue_events", queue.events.len())?;
        Ok(d)
    }

    /// (in flight, waiting) of the QoS 1 pushes the engine holds for MQTT connection
    /// `conn` ((0, 0): none, or not such a connection).
    fn mqtt_held(&self, conn: u64) -> (usize, usize) {
        let held = self
            .runtime
            .shared
            .mqtt_held
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        held.get(&ConnId(conn)).map_or((0, 0), |gauge| {
            (
                gauge[0].load(std::sync::atomic::Ordering::Relaxed),
                gauge[1].load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    /// Bodies and bytes by app and dictionary id (-1: sent raw, 0: zstd without a
    /// dictionary): `{app: [(dict_id, sent, sent_raw_bytes, sent_wire_bytes, received,
    /// received_raw_bytes, received_wire_bytes)]}`; app "" is every app not in `usage_apps`.
    fn usage<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (app, rows) in self.runtime.shared.usage.snapshot() {
            let list = PyList::empty(py);
            for (dict_id, row) in rows {
                list.append((dict_id, row[0], row[1], row[2], row[3], row[4], row[5]))?;
            }
            d.set_item(app, list)?;
        }
        Ok(d)
    }

    /// Stop the engine thread and close every socket (idempotent).
    fn shutdown(&self, py: Python<'_>) {
        let runtime = &self.runtime;
        py.detach(|| runtime.shutdown());
    }
}

/// The `channel._engine` extension module.
#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(ed25519_verify, m)?)?;
    m.add_function(wrap_pyfunction!(resume_ticket_seal, m)?)?;
    m.add_function(wrap_pyfunction!(resume_ticket_open, m)?)?;
    Ok(())
}

#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Whether `signature` is `public_key`'s (32 raw bytes) Ed25519 signature of `message`.
#[pyfunction]
fn ed25519_verify(public_key: &[u8], signature: &[u8], message: &[u8]) -> bool {
    crate::sig::ed25519_verify(public_key, signature, message)
}

/// An MMTP resume ticket (`channel/security/tickets.py` layout) sealed under `key`
/// (`key_id`) with `nonce`; `ValueError` for fields the layout cannot hold.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn resume_ticket_seal<'py>(
    py: Python<'py>,
    key: &[u8],
    key_id: u8,
    nonce: &[u8],
    session_id: &[u8],
    expires_at: u32,
    auth_expires_at: u64,
    user_id: String,
    scopes: String,
    device_id: &str,
    app_id: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let session_id = session_id
        .try_into()
        .map_err(|_| PyValueError::new_err("session_id must be 8 bytes"))?;
    let fields = crate::resume::TicketFields {
        session_id,
        expires_at,
        auth_expires_at,
        user_id,
        scopes,
    };
    crate::resume::seal(key, key_id, nonce, &fields, device_id, app_id)
        .map(|sealed| PyBytes::new(py, &sealed))
        .map_err(PyValueError::new_err)
}

/// The fields of an MMTP resume ticket, `(session_id, expires_at, auth_expires_at,
/// user_id, scopes)`, or None if it does not authenticate under `key` for this device
/// and app; `ValueError` if it authenticates but does not parse.
#[pyfunction]
fn resume_ticket_open<'py>(
    py: Python<'py>,
    key: &[u8],
    data: &[u8],
    device_id: &str,
    app_id: &str,
) -> PyResult<Option<Bound<'py, PyTuple>>> {
    match crate::resume::open(key, data, device_id, app_id) {
        Ok(f) => Ok(Some(PyTuple::new(
            py,
            [
                PyBytes::new(py, &f.session_id).into_any(),
                f.expires_at.into_bound_py_any(py)?,
                f.auth_expires_at.into_bound_py_any(py)?,
                f.user_id.into_bound_py_any(py)?,
                f.scopes.into_bound_py_any(py)?,
            ],
        )?)),
        Err(crate::resume::OpenError::Authentication) => Ok(None),
        Err(crate::resume::OpenError::Malformed) => {
            Err(PyValueError::new_err("ticket contents are malformed"))
        }
    }
}
