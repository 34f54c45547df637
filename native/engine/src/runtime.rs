//! Starting and stopping an engine thread, and binding listeners, without Python:
//! what `py.rs` wraps, and what the Rust tests drive directly.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::boundary::{Command, EventQueue};
use crate::config::EngineConfig;
use crate::engine::{Engine, Kind, Listener, Shared};
use crate::singleuse::SingleUseStore;
use crate::ticketer::{KeyRingTicketer, TicketKeys};
use crate::tls::{server_configs, EarlyData, TlsMaterial};

/// A preset table from Python (spec section 9.3), built by `py.rs`.
pub type PresetSpec = mmtp::PresetTable;

/// Everything an engine is built from.
#[derive(Default)]
pub struct Setup {
    pub config: EngineConfig,
    pub tls: Option<TlsMaterial>,
    /// (current key id, [(id, 32-byte key)]); None: a random key for this engine alone.
    pub ticket_keys: Option<(u8, TicketKeys)>,
    pub presets: Vec<PresetSpec>,
    /// `.mmtpdict` file contents.
    pub dictionaries: Vec<Vec<u8>>,
}

/// A running engine thread and the handle to it.
pub struct Runtime {
    pub shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Runtime {
    pub fn start(setup: Setup) -> Result<Runtime, String> {
        setup.config.validate()?;
        let lifetime = setup.config.ticket_lifetime_s;
        let ticketer = match &setup.ticket_keys {
            Some((current, keys)) => KeyRingTicketer::new(*current, keys, lifetime)?,
            None => KeyRingTicketer::random(lifetime),
        };
        let early = (setup.config.early_data_max_bytes > 0).then(|| EarlyData {
            store: SingleUseStore::new(ticketer.clone()),
            max_bytes: setup.config.early_data_max_bytes,
        });
        let configs = match &setup.tls {
            Some(material) => Some(server_configs(material, ticketer.clone(), early.as_ref())?),
            None => None,
        };
        let mut presets = mmtp::Presets::builtin();
        for table in setup.presets {
            presets.insert(table).map_err(|e| format!("presets: {e}"))?;
        }
        let usage = Arc::new(crate::engine::dicts::UsageTable::default());
        usage.set_apps(&setup.config.usage_apps);
        let mut dictionaries = Vec::new();
        for data in &setup.dictionaries {
            dictionaries.push(
                mmtp::Dictionary::from_file_bytes(data)
                    .map_err(|e| format!("dictionaries: {e}"))?,
            );
        }
        let codec = mmtp::BodyCodec::new(dictionaries).map_err(|e| format!("dictionaries: {e}"))?;
        codec.set_min_saving(setup.config.compress_min_saving);
        let (poll, waker) = Engine::poll().map_err(|e| format!("cannot create the poll: {e}"))?;
        let eventfd =
            crate::sys::eventfd().map_err(|e| format!("cannot create the eventfd: {e}"))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(EventQueue::default()),
            commands: Mutex::new(Vec::new()),
            waker,
            eventfd,
            stats: Default::default(),
            frames: Arc::new(mmtp::FrameCounters::default()),
            tls: RwLock::new(configs),
            ticketer,
            early,
            codec: Arc::new(codec),
            presets: RwLock::new(Arc::new(presets)),
            usage,
            mqtt_held: Mutex::default(),
            config: setup.config,
        });
        let engine = Engine::new(poll, shared.clone());
        let thread = std::thread::Builder::new()
            .name("channel-engine".into())
            .spawn(move || engine.run())
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        Ok(Runtime {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Bind and listen (SO_REUSEPORT, backlog, TCP Fast Open); returns the real port.
    pub fn listen(
        &self,
        kind: Kind,
        host: &str,
        port: u16,
        options: ListenOptions,
    ) -> Result<u16, String> {
        if kind == Kind::Mmtp && !options.tls {
            return Err("MMTP listeners are TLS only (tls=True)".into());
        }
        if options.proxy && self.shared.config.proxy_trusted.is_empty() {
            return Err("proxy listener: no balancer is trusted (configure proxy_trusted)".into());
        }
        if options.tls
            && self
                .shared
                .tls
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
        {
            return Err(
                "no TLS certificate: configure tls_cert_pem and tls_key_pem, or reload_tls".into(),
            );
        }
        let addr: SocketAddr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {host}"))?;
        let bind = || -> std::io::Result<std::net::TcpListener> {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            if options.reuse_port {
                socket.set_reuse_port(true)?;
            }
            socket.bind(&addr.into())?;
            socket.listen(options.backlog)?;
            socket.set_nonblocking(true)?;
            if options.fast_open_queue > 0 {
                // Refused where the kernel does not allow it: devices connect as before.
                let _ = crate::sys::enable_fast_open(&socket, options.fast_open_queue);
            }
            Ok(socket.into())
        };
        let listener = bind().map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?
            .port();
        let socket = mio::net::TcpListener::from_std(listener);
        self.shared.submit_internal(Command::Listen(Listener {
            socket,
            kind,
            tls: options.tls,
            proxy: options.proxy,
        }));
        Ok(port)
    }

    /// Replace the certificate (and client CA) for new connections; open ones keep theirs.
    pub fn reload_tls(&self, material: &TlsMaterial) -> Result<(), String> {
        let configs = server_configs(
            material,
            self.shared.ticketer.clone(),
            self.shared.early.as_ref(),
        )?;
        *self.shared.tls.write().unwrap_or_else(|e| e.into_inner()) = Some(configs);
        crate::stats::Stats::inc(&self.shared.stats.tls_reloads);
        Ok(())
    }

    /// Stop accepting; returns once the engine closed its listeners.
    pub fn close_listeners(&self) -> Result<(), String> {
        let (done, wait) = mpsc::sync_channel(1);
        self.shared.submit_internal(Command::CloseListeners(done));
        wait.recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the engine thread did not close its listeners".to_string())
    }

    /// Stop the thread and close every socket (idempotent).
    pub fn shutdown(&self) {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            self.shared.submit_internal(Command::Shutdown);
            let _ = thread.join();
            // Nobody takes events any more: what is queued goes now, not with the
            // last reference (a handed-off upstream socket closes with its event).
            drop(self.shared.take_events());
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How a listener is set up.
#[derive(Clone, Copy, Debug)]
pub struct ListenOptions {
    pub tls: bool,
    pub reuse_port: bool,
    pub backlog: i32,
    pub fast_open_queue: u32,
    /// Peers are load balancers sending a PROXY protocol header before anything else
    /// (only those in `EngineConfig::proxy_trusted` may connect).
    pub proxy: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            tls: true,
            reuse_port: true,
            backlog: 4096,
            fast_open_queue: 0,
            proxy: false,
        }
    }
}
