//! The message channel between berth and the process it is setting up
//! (a SOCK_SEQPACKET socketpair: one message per send, fds passed inline).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::sys;

/// The largest message: an error text is cut to fit (the receive buffer is
/// on the stack, not a zeroed allocation per message).
const MAX_MESSAGE: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub enum Msg {
    /// Parent: uid maps and cgroup are in place, carry on.
    Go,
    /// Parent: the v1 cgroups it made while the child set up are ready to
    /// join (only when the handshake deferred them).
    CgroupsReady,
    /// Child: please run the prestart/createRuntime hooks now.
    RunHooks,
    /// Parent: those hooks succeeded.
    HooksDone,
    /// Child (two-stage): the container init has this pid.
    Pid(i32),
    /// Child: the pty master follows as an fd.
    Console,
    /// Child: set up, waiting to be started.
    Ready,
    /// Parent: start the user process now.
    Start,
    /// Child: setup failed.
    Error(String),
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Go => b"G".to_vec(),
            Msg::CgroupsReady => b"g".to_vec(),
            Msg::RunHooks => b"h".to_vec(),
            Msg::HooksDone => b"H".to_vec(),
            Msg::Pid(pid) => {
                let mut v = b"p".to_vec();
                v.extend_from_slice(&pid.to_le_bytes());
                v
            }
            Msg::Console => b"c".to_vec(),
            Msg::Ready => b"r".to_vec(),
            Msg::Start => b"S".to_vec(),
            Msg::Error(text) => {
                let mut v = b"E".to_vec();
                let mut end = text.len().min(MAX_MESSAGE - 1);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                v.extend_from_slice(&text.as_bytes()[..end]);
                v
            }
        }
    }

    fn decode(buf: &[u8]) -> io::Result<Msg> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed setup message");
        let (&tag, rest) = buf.split_first().ok_or_else(bad)?;
        Ok(match tag {
            b'G' => Msg::Go,
            b'g' => Msg::CgroupsReady,
            b'h' => Msg::RunHooks,
            b'H' => Msg::HooksDone,
            b'p' => Msg::Pid(i32::from_le_bytes(rest.try_into().map_err(|_| bad())?)),
            b'c' => Msg::Console,
            b'r' => Msg::Ready,
            b'S' => Msg::Start,
            b'E' => Msg::Error(String::from_utf8_lossy(rest).into_owned()),
            _ => return Err(bad()),
        })
    }
}

/// One end of the channel.
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    pub fn send(&self, msg: &Msg) -> io::Result<()> {
        let data = msg.encode();
        loop {
            match rustix::net::send(&self.fd, &data, rustix::net::SendFlags::NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn send_fd(&self, msg: &Msg, fd: impl AsFd) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        sys::send_fd(self.fd.as_fd(), &msg.encode(), fd.as_fd().as_raw_fd())
    }

    /// Receives the next message; `Ok(None)` when the other end is closed
    /// (for the parent: the child exec'd or died).
    pub fn recv(&self) -> io::Result<Option<(Msg, Option<OwnedFd>)>> {
        let mut buf = [0u8; MAX_MESSAGE];
        loop {
            match sys::recv_fd(self.fd.as_fd(), &mut buf) {
                Ok((0, _)) => return Ok(None),
                Ok((n, fd)) => return Ok(Some((Msg::decode(&buf[..n])?, fd))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives a message that must be `expected`; an Error message or EOF
    /// becomes an error.
    pub fn expect(&self, expected: Msg) -> io::Result<()> {
        match self.recv()? {
            Some((m, _)) if m == expected => Ok(()),
            Some((Msg::Error(text), _)) => Err(io::Error::other(text)),
            Some((m, _)) => Err(io::Error::other(format!("unexpected setup message {m:?}"))),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other side exited",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_arrives_cut_at_a_character_boundary() {
        let (a, b) = Channel::pair().unwrap();
        let text = "é".repeat(5000);
        a.send(&Msg::Error(text.clone())).unwrap();
        let Some((Msg::Error(got), None)) = b.recv().unwrap() else {
            panic!("expected an error message");
        };
        assert!(got.len() < MAX_MESSAGE && got.len() > MAX_MESSAGE - 8);
        assert!(text.starts_with(&got));
        a.send(&Msg::Pid(42)).unwrap();
        assert_eq!(b.recv().unwrap().map(|(m, _)| m), Some(Msg::Pid(42)));
    }
}
