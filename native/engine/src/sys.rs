//! The few Linux calls std, mio and socket2 do not offer: eventfd, TCP Fast Open
//! on a listener, and whether an accepted connection's SYN carried data.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `setsockopt(IPPROTO_TCP, TCP_FASTOPEN, queue)`: accept SYNs carrying data (at
/// most `queue` pending). Err where the kernel refuses; the listener works as before.
pub fn enable_fast_open(socket: &impl AsRawFd, queue: u32) -> io::Result<()> {
    let value: libc::c_int = queue.min(libc::c_int::MAX as u32) as libc::c_int;
    // SAFETY: the fd is a live socket borrowed for the call; the option value is a
    // c_int on our stack and the length passed is exactly its size, so the kernel
    // reads only memory we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `setsockopt(IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)` on a client socket: its
/// `connect` returns at once and the first write rides in the SYN (with a cookie from
/// an earlier connection; without one the SYN asks for it).
pub fn enable_fast_open_connect(socket: &impl AsRawFd) -> io::Result<()> {
    let value: libc::c_int = 1;
    // SAFETY: as in `enable_fast_open`: a live socket, a c_int on our stack, its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN_CONNECT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `tcpi_options` bit: the connection was opened by a SYN whose data was taken (on an
/// accepted socket: we took it; on a client socket: the server acknowledged it).
const TCPI_OPT_SYN_DATA: u8 = 0x20;
/// `struct tcp_info`: state, ca_state, retransmits, probes, backoff, options, ...
const TCPI_OPTIONS_OFFSET: usize = 5;

/// True if this connection's SYN carried data that was taken (TCP Fast Open).
pub fn syn_carried_data(socket: &impl AsRawFd) -> bool {
    let mut info = [0u8; 8];
    let mut length = info.len() as libc::socklen_t;
    // SAFETY: the fd is a live socket borrowed for the call; `info` is an 8-byte
    // buffer on our stack and `length` tells the kernel so: it writes at most that
    // many bytes (a truncated tcp_info) and stores the written size in `length`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut length,
        )
    };
    rc == 0
        && length as usize > TCPI_OPTIONS_OFFSET
        && info[TCPI_OPTIONS_OFFSET] & TCPI_OPT_SYN_DATA != 0
}

/// A non-blocking eventfd as a `File`: write 8 bytes to signal, read 8 to clear.
pub fn eventfd() -> io::Result<File> {
    // SAFETY: eventfd takes no pointers; it returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd, is open, and nothing else owns it;
    // the OwnedFd takes sole ownership and closes it once.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Wait until `fd` is readable or `timeout_ms` passes; true if readable.
pub fn wait_readable(fd: &impl AsRawFd, timeout_ms: i32) -> bool {
    let mut entry = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on our stack, and the count passed is 1: the kernel reads
    // and writes only that struct; the fd is borrowed and open for the call.
    let rc = unsafe { libc::poll(&mut entry, 1, timeout_ms) };
    rc > 0 && entry.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn eventfd_signals_and_clears() {
        let mut fd = eventfd().unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            fd.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        fd.write_all(&1u64.to_ne_bytes()).unwrap();
        fd.write_all(&1u64.to_ne_bytes()).unwrap();
        assert!(wait_readable(&fd, 1000));
        fd.read_exact(&mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 2, "signals add up until read");
        assert!(!wait_readable(&fd, 0));
        assert_eq!(
            fd.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn fast_open_on_a_listener_and_syn_data_on_a_plain_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // The kernel may refuse TFO to servers (sysctl); either answer is fine here.
        let _ = enable_fast_open(&listener, 16);
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(
            !syn_carried_data(&server),
            "a plain connect carries no SYN data"
        );
        drop(client);
    }
}
