//! systemd readiness (`Type=notify`): READY=1 once the mount is live, STOPPING=1 on shutdown.
//! A no-op when NOTIFY_SOCKET is not set.

use std::os::unix::net::{SocketAddr, UnixDatagram};

pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(abstract_name.as_bytes())
    } else {
        SocketAddr::from_pathname(&path)
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({path}): {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_datagrams_to_notify_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&p).unwrap();
        // SAFETY: this test is the only user of NOTIFY_SOCKET in this process.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &p) };
        super::notify("READY=1");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
